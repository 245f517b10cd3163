//! Unit tests of the `compact` module.

use super::*;

fn facts<'a>(jti: &'a str, sid: &'a str, sub: &'a str, iat: u64) -> TokenFacts<'a> {
    TokenFacts {
        jti: Some(jti),
        session_id: Some(sid),
        subject: Some(sub),
        issued_at: Some(iat),
        expires_at: None,
        issuer: None,
    }
}

fn loaded(compact: &Compact, entries: impl IntoIterator<Item = Entry>) {
    let mut build = compact.build();
    for entry in entries {
        build.add(entry, now_seconds());
    }
    build.finish().unwrap();
}

#[test]
fn every_kind_is_found_and_unknown_keys_are_clear() {
    let compact = Compact::new(1 << 20);
    assert_eq!(compact.probe(&facts("a", "b", "c", 0)), None, "off until loaded");
    let now = now_seconds();
    let later = now + 3600;
    loaded(
        &compact,
        (0..10_000).flat_map(|i| {
            [
                compact.entry(Kind::Token, &format!("t{i}"), later),
                compact.entry(Kind::Session, &format!("s{i}"), later),
                compact.entry(Kind::Subject, &format!("u{i}"), now - 60),
            ]
        }),
    );
    assert_eq!(compact.len(), 30_000);
    let iat = u64::from(now);
    for i in 0..10_000 {
        let (t, s, u) = (format!("t{i}"), format!("s{i}"), format!("u{i}"));
        let maybe = |by| Some(Probe::Maybe(by));
        assert_eq!(compact.probe(&facts(&t, "x", "x", iat)), maybe(RevokedBy::Token));
        assert_eq!(
            compact.probe(&facts("x", &s, "x", iat)),
            maybe(RevokedBy::Session)
        );
        assert_eq!(
            compact.probe(&facts("x", "x", &u, iat - 120)),
            maybe(RevokedBy::Subject)
        );
        // A cutoff does not cover a token issued after it; kinds never mix.
        assert_eq!(compact.probe(&facts("x", "x", &u, iat)), Some(Probe::Clear));
        assert_eq!(compact.probe(&facts(&s, &u, &t, iat)), Some(Probe::Clear));
    }
    // 30 000 entries, built by rebuilds at twice the live count: 16 to 24 bytes each.
    assert!(
        (16 * 30_000..=24 * 30_000).contains(&compact.bytes()),
        "{}",
        compact.bytes()
    );
}

#[test]
fn a_merge_never_shortens_and_a_snapshot_skips_dead_entries() {
    let compact = Compact::new(1 << 20);
    let now = now_seconds();
    loaded(
        &compact,
        (0..4000).map(|i| compact.entry(Kind::Token, &format!("t{i}"), now + 3600)),
    );
    for i in 0..4000 {
        // The same keys, kept until a moment already past: the longer keep stays.
        assert!(
            compact
                .insert(compact.entry(Kind::Token, &format!("t{i}"), now - 10))
                .held
        );
    }
    assert_eq!(compact.len(), 4000);
    let expired = Compact::new(1 << 20);
    loaded(
        &expired,
        (0..4000).map(|i| expired.entry(Kind::Token, &format!("t{i}"), now - 1)),
    );
    assert_eq!(expired.len(), 0, "dead entries of a snapshot are not loaded");
    assert_eq!(expired.bytes(), MIN_SLOTS * SLOT_BYTES);
    assert_eq!(expired.probe(&facts("t1", "x", "x", 0)), Some(Probe::Clear));
}

#[test]
fn dead_slots_are_reused_and_the_table_shrinks_when_most_are_dead() {
    let compact = Compact::new(1 << 20);
    loaded(&compact, []);
    let now = now_seconds();
    for i in 0..3000 {
        compact.insert(compact.entry(Kind::Session, &format!("soon{i}"), now + 100));
    }
    let grown = compact.bytes();
    assert_eq!(compact.len(), 3000);
    assert!(!compact.sweep_at(now), "nothing is dead yet");
    assert!(compact.sweep_at(now + 101), "all dead a moment later");
    assert_eq!(compact.len(), 0);
    assert!(compact.bytes() < grown, "{} >= {grown}", compact.bytes());
    // Entries dead when filed take the dead slots of their probe run: the table stays put.
    let small = compact.bytes();
    for i in 0..3000 {
        compact.insert(compact.entry(Kind::Session, &format!("gone{i}"), now - 10));
    }
    assert_eq!(compact.bytes(), small);
    // A dead slot in a probe run is reused, and the live key is still found past it.
    let live = compact.entry(Kind::Session, "live", u32::MAX);
    assert!(compact.insert(live).held);
    assert_eq!(
        compact.probe(&facts("x", "live", "x", 0)),
        Some(Probe::Maybe(RevokedBy::Session))
    );
}

#[test]
fn a_cutoff_at_the_end_of_time_covers_every_token() {
    let compact = Compact::new(16);
    loaded(
        &compact,
        [compact.entry(Kind::Subject, "banned", seconds(u64::MAX))],
    );
    assert_eq!(
        compact.probe(&facts("x", "x", "banned", u64::MAX)),
        Some(Probe::Maybe(RevokedBy::Subject))
    );
    let mut no_iat = facts("x", "x", "banned", 0);
    no_iat.issued_at = None;
    assert_eq!(compact.probe(&no_iat), Some(Probe::Maybe(RevokedBy::Subject)));
}

#[test]
fn passing_max_entries_turns_the_mirror_off() {
    let compact = Compact::new(100);
    let later = now_seconds() + 60;
    let mut build = compact.build();
    for i in 0..150 {
        build.add(compact.entry(Kind::Token, &format!("t{i}"), later), now_seconds());
    }
    assert_eq!(build.finish(), Err(Overflow));
    assert!(!compact.active());
    loaded(
        &compact,
        (0..99).map(|i| compact.entry(Kind::Token, &format!("t{i}"), later)),
    );
    assert!(compact.active());
    assert!(compact.insert(compact.entry(Kind::Token, "one more", later)).held);
    let mut filed = None;
    for i in 0..1000 {
        let this = compact.insert(compact.entry(Kind::Token, &format!("n{i}"), later));
        if !this.held {
            filed = Some(this);
            break;
        }
    }
    assert_eq!(
        filed,
        Some(Filed {
            held: false,
            fell_back: true
        }),
        "an insert past the bound is refused and turns the table off"
    );
    assert!(!compact.active());
}

#[test]
fn writes_during_a_build_are_in_the_new_table() {
    let compact = Compact::new(1 << 20);
    let later = now_seconds() + 60;
    let mut build = compact.build();
    build.add(
        compact.entry(Kind::Token, "from the snapshot", later),
        now_seconds(),
    );
    assert!(
        compact
            .insert(compact.entry(Kind::Token, "written meanwhile", later))
            .held
    );
    build.finish().unwrap();
    for jti in ["from the snapshot", "written meanwhile"] {
        assert_eq!(
            compact.probe(&facts(jti, "x", "x", 0)),
            Some(Probe::Maybe(RevokedBy::Token))
        );
    }
    // A build dropped unfinished stops keeping writes and leaves the table as it was.
    let build = compact.build();
    drop(build);
    assert!(compact.writer().pending.is_none());
    assert!(compact.active());
}

/// Readers on other threads never miss an entry that was filed before they looked, while the
/// writer keeps inserting and growing the table.
#[test]
fn readers_never_miss_an_entry_across_growth() {
    let compact = Arc::new(Compact::new(1 << 22));
    loaded(&compact, []);
    let filed = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (compact, filed) = (Arc::clone(&compact), Arc::clone(&filed));
            std::thread::spawn(move || {
                let mut checked = 0;
                loop {
                    let upto = filed.load(Ordering::Acquire);
                    for i in upto.saturating_sub(50)..upto {
                        let jti = format!("t{i}");
                        assert_eq!(
                            compact.probe(&facts(&jti, "x", "x", 0)),
                            Some(Probe::Maybe(RevokedBy::Token)),
                            "{jti} filed, then missed"
                        );
                        checked += 1;
                    }
                    if upto == 200_000 {
                        break checked;
                    }
                }
            })
        })
        .collect();
    for i in 0..200_000u64 {
        compact.insert(compact.entry(Kind::Token, &format!("t{i}"), u32::MAX));
        filed.store(i + 1, Ordering::Release);
    }
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(compact.len(), 200_000);
}
