//! Unit tests of the `memory` module.

use super::*;
use crate::backend::far_future;

fn trust() -> Trust {
    Trust {
        negatives: true,
        mirror: true,
        confirm: true,
    }
}

/// Found in review: a subject looked up in lookup mode (a current "no cutoff" marker), then
/// a mirror promoted, a cutoff filed in its table only, and the mirror fallen back: the
/// stale marker answered the covered token "not revoked". Now a cutoff filed in the mirror
/// clears the marker, and a fall-back forgets every negative.
#[test]
fn a_mirror_that_falls_back_leaves_no_stale_negative() {
    let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 3);
    let now = unix_seconds(SystemTime::now());
    let facts = TokenFacts {
        jti: Some("t"),
        session_id: None,
        subject: Some("s"),
        issued_at: Some(now - 10),
        expires_at: Some(now + 600),
        issuer: None,
    };
    memory.remember(&facts, &Lookup::default(), memory.epoch(), true);
    assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
    memory.compact().build().finish().unwrap();
    assert!(memory.mirroring());
    memory.cutoff(None, "s", now);
    // Past mirror_max_entries (3): the table goes off.
    for jti in ["a", "b", "c", "d"] {
        memory.revoked_token(jti, Some(far_future()));
    }
    assert!(!memory.mirroring());
    assert_ne!(memory.answer(&facts, trust()), Some(Verdict::Active));
    // The revocations filed after the fall-back are positives.
    let d = TokenFacts {
        jti: Some("d"),
        ..facts
    };
    assert_eq!(
        memory.answer(&d, trust()),
        Some(Verdict::Revoked(RevokedBy::Token))
    );
}

/// Issue 24, item 5. A reload starts while mirroring; while its snapshot is read, an insert
/// passes `mirror_max_entries` (the table goes off) and lookup mode stores a negative; the
/// reload then fits. That is a promotion, and the negative must go. On `main` the load read
/// "was mirroring" before the overflow and kept it (found by reading: the two reads cannot
/// be interleaved from a test there; now there is one read, under the writer's lock).
#[test]
fn a_promotion_after_an_overflow_during_its_reload_forgets_lookup_negatives() {
    let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 3);
    memory.compact().build().finish().unwrap();
    for jti in ["a", "b", "c"] {
        memory.revoked_token(jti, Some(far_future()));
    }
    assert!(memory.mirroring());
    let reload = memory.compact().build();
    memory.revoked_token("d", Some(far_future()));
    assert!(!memory.mirroring(), "past mirror_max_entries");
    let now = unix_seconds(SystemTime::now());
    let facts = TokenFacts {
        jti: Some("t"),
        session_id: Some("s"),
        subject: None,
        issued_at: Some(now),
        expires_at: Some(now + 600),
        issuer: Some("A"),
    };
    memory.remember(&facts, &Lookup::default(), memory.epoch(), true);
    assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
    // The snapshot the reload read holds "d" alone (the ledger purged the others): it fits.
    memory.finish_load(reload).unwrap();
    assert!(memory.mirroring());
    assert!(
        !memory.negatives.tokens.contains_key("t"),
        "a negative of lookup mode survived"
    );
    assert!(
        !memory
            .negatives
            .issuer_sessions
            .contains_key(&issuer_key("A", "s"))
    );
}

/// Issue 24, item 7. On `main`, moka evicted positives for size and ran the listener that
/// drops their negatives after the entry was gone: in between, an issuer view's "not
/// revoked" that an unkeyed session revocation overrode answered the revoked token "not
/// revoked" (a test that removed the positive without its listener, the state moka leaves
/// for that moment, failed there). Now positives bound themselves and drop what depends on
/// an entry before it (`positives` tests that order); here, every eviction a full tier makes
/// leaves each revoked token refused or asked of the ledger, never "not revoked".
#[test]
fn a_full_tier_never_answers_a_revoked_token_not_revoked() {
    let memory = Memory::new(2, Duration::from_secs(30), Duration::from_secs(300), 1000);
    let now = unix_seconds(SystemTime::now());
    let of_a = TokenFacts {
        jti: Some("t"),
        session_id: Some("s"),
        subject: Some("u"),
        issued_at: Some(now - 10),
        expires_at: Some(now + 600),
        issuer: Some("A"),
    };
    let plain = TokenFacts { issuer: None, ..of_a };
    let no_sid = |facts: TokenFacts<'static>| TokenFacts {
        session_id: None,
        ..facts
    };
    for facts in [of_a, plain, no_sid(of_a), no_sid(plain)] {
        memory.remember(&facts, &Lookup::default(), memory.epoch(), true);
        assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
    }
    memory.revoked_session(None, "s", Some(far_future()));
    memory.cutoff(None, "u", now);
    let refused_or_asked = |memory: &Memory| {
        for facts in [of_a, plain, no_sid(of_a), no_sid(plain)] {
            assert_ne!(memory.answer(&facts, trust()), Some(Verdict::Active), "{facts:?}");
        }
    };
    refused_or_asked(&memory);
    for i in 0..20 {
        memory.revoked_session(None, &format!("x{i}"), Some(far_future()));
        memory.cutoff(None, &format!("y{i}"), now);
        refused_or_asked(&memory);
    }
    assert!(memory.evicted() > 0, "the tier never filled");
    assert!(!memory.revoked_sessions.contains_key("s") || !memory.cutoffs.contains_key("u"));
}

/// Found in review: a check reads a subject's marker before its cutoffs, and an eviction
/// drops the marker before the cutoff, so a check overlapping an eviction could see the
/// marker and then no cutoff. While an eviction runs (its sequence odd), or once one ran
/// during the check, negatives answer nothing.
#[test]
fn no_negative_answers_for_a_check_an_eviction_overlaps() {
    let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 1000);
    let now = unix_seconds(SystemTime::now());
    let facts = TokenFacts {
        jti: Some("t"),
        session_id: None,
        subject: Some("u"),
        issued_at: Some(now - 10),
        expires_at: Some(now + 600),
        issuer: None,
    };
    memory.remember(&facts, &Lookup::default(), memory.epoch(), true);
    assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
    memory.shared.evicting.fetch_add(1, Ordering::SeqCst);
    assert_eq!(memory.answer(&facts, trust()), None, "an eviction is running");
    memory.shared.evicting.fetch_add(1, Ordering::SeqCst);
    assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
}

/// A keyed revocation answers for its issuer's view only, an unkeyed one for every view, and
/// a view without an issuer (a layer that does not key) sees keyed revocations of every
/// issuer from memory: from events, and from what its lookups found.
#[test]
fn keyed_revocations_answer_their_issuers_view_and_every_unkeyed_one() {
    let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 1000);
    let now = unix_seconds(SystemTime::now());
    let plain = TokenFacts {
        jti: Some("t"),
        session_id: Some("s"),
        subject: Some("u"),
        issued_at: Some(now - 10),
        expires_at: Some(now + 600),
        issuer: None,
    };
    let view = |issuer, facts: TokenFacts<'static>| TokenFacts { issuer, ..facts };
    let (of_a, of_b) = (view(Some("A"), plain), view(Some("B"), plain));
    for facts in [&plain, &of_a, &of_b] {
        memory.remember(facts, &Lookup::default(), memory.epoch(), true);
        assert_eq!(memory.answer(facts, trust()), Some(Verdict::Active));
    }
    memory.revoked_session(Some("A"), "s", Some(far_future()));
    let session = Some(Verdict::Revoked(RevokedBy::Session));
    assert_eq!(memory.answer(&of_a, trust()), session);
    assert_eq!(memory.answer(&of_b, trust()), Some(Verdict::Active));
    assert_eq!(memory.answer(&plain, trust()), session);

    memory.cutoff(Some("B"), "u", now);
    let without_sid = |facts: TokenFacts<'static>| TokenFacts {
        session_id: None,
        ..facts
    };
    let subject = Some(Verdict::Revoked(RevokedBy::Subject));
    assert_eq!(memory.answer(&without_sid(of_b), trust()), subject);
    assert_eq!(memory.answer(&without_sid(of_a), trust()), Some(Verdict::Active));
    assert_eq!(memory.answer(&without_sid(plain), trust()), subject);

    // Unkeyed: every view.
    memory.revoked_session(None, "s2", Some(far_future()));
    for facts in [plain, of_a, of_b] {
        let other = TokenFacts {
            session_id: Some("s2"),
            ..facts
        };
        assert_eq!(memory.answer(&other, trust()), session);
    }
    // What lookups found under an issuer: kept under that issuer for its view, by key alone
    // for a view without one (answered from memory, even while negatives are not trusted).
    let c = TokenFacts {
        jti: Some("t3"),
        session_id: Some("s3"),
        subject: Some("u3"),
        ..of_a
    };
    let found = Lookup {
        issuer_session_revoked: true,
        ..Lookup::default()
    };
    memory.remember(&c, &found, memory.epoch(), true);
    assert_eq!(memory.answer(&c, trust()), session);
    assert_eq!(memory.answer(&view(Some("B"), c), trust()), None);
    let d = view(
        None,
        TokenFacts {
            session_id: Some("s4"),
            ..c
        },
    );
    memory.remember(&d, &found, memory.epoch(), true);
    let outage = Trust {
        negatives: false,
        ..trust()
    };
    assert_eq!(memory.answer(&d, outage), session);
}
