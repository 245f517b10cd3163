//! What the relay publishes and the feed reads: the two kinds of message on the stream, their
//! subjects, and their JSON, parsed into a typed value at the edge with a bounded size.
//!
//! - `{stream}.event`: one ledger event, `Nats-Msg-Id` `seq-{seq}` (so that a second relay's
//!   copy of the same event is dropped by JetStream), and in its body the event and `prev`, the
//!   `seq` the publishing relay published before it (or resumed from). A reader that delivered
//!   less than `prev` missed something and repairs it from the ledger.
//! - `{stream}.sync`: a relay's marker, `{"last_seq", "proved_at", "relay"}`: every revocation
//!   committed before `proved_at` (the relay's clock) has a `seq` of at most `last_seq` and was
//!   published before this marker.
//!
//! A message that does not parse (a foreign publisher, a newer build's format) is never skipped
//! silently: the reader repairs from the ledger as if it had missed an event.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::backend::postgres::sql::{epoch_seconds, from_epoch_seconds};
use crate::backend::{RevocationEvent, RevocationKind, RevocationRecord};

/// The largest message body read: an event is a few hundred bytes, its keys at most 1 KiB each.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;

/// The subject events are published on.
pub(super) fn event_subject(stream: &str) -> String {
    format!("{stream}.event")
}

/// The subject markers are published on.
pub(super) fn sync_subject(stream: &str) -> String {
    format!("{stream}.sync")
}

/// The message id JetStream deduplicates an event's copies by.
pub(super) fn message_id(seq: i64) -> String {
    format!("seq-{seq}")
}

/// One event as published.
#[derive(Debug, Serialize, Deserialize)]
struct EventBody {
    seq: i64,
    /// The `seq` the relay published before this one (or resumed after); `None` when unknown.
    prev: Option<i64>,
    kind: RevocationKind,
    key: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    /// Unix seconds (fractional); ±infinity as JSON `null` never occurs: see `seconds`.
    #[serde(default)]
    expires_at: Option<f64>,
    #[serde(default)]
    not_before: Option<f64>,
    revoked_at: f64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    revoked_by: Option<String>,
}

/// A marker as published.
#[derive(Debug, Serialize, Deserialize)]
struct MarkerBody {
    last_seq: i64,
    proved_at: f64,
    #[serde(default)]
    relay: String,
}

/// A message of the stream, read.
#[derive(Debug)]
pub(super) enum Message {
    /// An event, and the `seq` its relay published before it.
    Event {
        event: RevocationEvent,
        prev: Option<i64>,
    },
    /// A relay's proof of sync.
    Marker { last_seq: i64, proved_at: SystemTime },
    /// Something that is not a message of this format: treated as a missed event.
    Unreadable(&'static str),
}

/// Seconds for JSON, which has no infinity: `'infinity'` (and anything past what Postgres or
/// the clock holds) is sent as the largest finite value, which reads back as the far future.
fn seconds(time: SystemTime) -> f64 {
    let seconds = epoch_seconds(time);
    if seconds.is_finite() {
        seconds
    } else if seconds > 0.0 {
        f64::MAX
    } else {
        f64::MIN
    }
}

/// The body of `event` as published after `prev`.
pub(super) fn encode_event(event: &RevocationEvent, prev: Option<i64>) -> Vec<u8> {
    let record = &event.record;
    let body = EventBody {
        seq: event.seq,
        prev,
        kind: record.kind,
        key: record.key.clone(),
        issuer: record.issuer.clone(),
        subject: record.subject.clone(),
        expires_at: record.expires_at.map(seconds),
        not_before: record.not_before.map(seconds),
        revoked_at: seconds(record.revoked_at),
        reason: record.reason.clone(),
        revoked_by: record.revoked_by.clone(),
    };
    // A struct of strings and numbers (all finite) always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The body of a marker.
pub(super) fn encode_marker(last_seq: i64, proved_at: SystemTime, relay: &str) -> Vec<u8> {
    let body = MarkerBody {
        last_seq,
        proved_at: seconds(proved_at),
        relay: relay.to_owned(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Reads a message of `subject` with `payload`.
pub(super) fn decode(stream: &str, subject: &str, payload: &[u8]) -> Message {
    if payload.len() > MAX_MESSAGE {
        return Message::Unreadable("a message over 64 KiB");
    }
    let Some(kind) = subject
        .strip_prefix(stream)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return Message::Unreadable("a subject outside the stream's");
    };
    match kind {
        "event" => match serde_json::from_slice::<EventBody>(payload) {
            Ok(body) => event(body).unwrap_or(Message::Unreadable("an event with an unusable key")),
            Err(_) => Message::Unreadable("an event that is not this format's JSON"),
        },
        "sync" => match serde_json::from_slice::<MarkerBody>(payload) {
            Ok(body) if body.proved_at.is_finite() => Message::Marker {
                last_seq: body.last_seq,
                proved_at: from_epoch_seconds(body.proved_at),
            },
            _ => Message::Unreadable("a marker that is not this format's JSON"),
        },
        _ => Message::Unreadable("a subject of another kind"),
    }
}

fn event(body: EventBody) -> Option<Message> {
    let usable = |key: &str| !key.is_empty() && key.len() <= 1024 && !key.contains('\0');
    if !usable(&body.key) || body.issuer.as_deref().is_some_and(|issuer| !usable(issuer)) {
        return None;
    }
    let time = |seconds: f64| (!seconds.is_nan()).then(|| from_epoch_seconds(seconds));
    Some(Message::Event {
        prev: body.prev,
        event: RevocationEvent {
            seq: body.seq,
            record: RevocationRecord {
                kind: body.kind,
                key: body.key,
                issuer: body.issuer,
                subject: body.subject,
                expires_at: body.expires_at.and_then(time),
                not_before: body.not_before.and_then(time),
                revoked_at: time(body.revoked_at)?,
                reason: body.reason,
                revoked_by: body.revoked_by,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::far_future;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample(seq: i64) -> RevocationEvent {
        RevocationEvent {
            seq,
            record: RevocationRecord {
                kind: RevocationKind::Session,
                key: "s-1".into(),
                issuer: Some("https://a.example".into()),
                subject: Some("alice".into()),
                expires_at: Some(far_future()),
                not_before: None,
                revoked_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                reason: Some("logout".into()),
                revoked_by: None,
            },
        }
    }

    #[test]
    fn an_event_and_a_marker_read_back_as_they_were_sent() {
        let event = sample(42);
        match decode("S", "S.event", &encode_event(&event, Some(41))) {
            Message::Event { event: read, prev } => {
                assert_eq!(prev, Some(41));
                assert_eq!(read.seq, 42);
                assert_eq!(read.record.key, "s-1");
                assert_eq!(read.record.issuer.as_deref(), Some("https://a.example"));
                assert_eq!(read.record.revoked_at, event.record.revoked_at);
                assert!(
                    read.record
                        .expires_at
                        .is_some_and(|at| at > UNIX_EPOCH + Duration::from_secs(1 << 40))
                );
            }
            other => panic!("{other:?}"),
        }
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        match decode("S", "S.sync", &encode_marker(7, at, "relay-1")) {
            Message::Marker { last_seq, proved_at } => assert_eq!((last_seq, proved_at), (7, at)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anything_else_is_unreadable_never_a_panic() {
        for (subject, payload) in [
            ("S.event", &b"{}"[..]),
            ("S.event", b"not json"),
            ("S.sync", br#"{"last_seq": 1, "proved_at": "yesterday"}"#),
            ("S.other", b"{}"),
            ("T.event", b"{}"),
            ("S", b""),
            ("S.event", br#"{"seq":1,"kind":"token","key":"","revoked_at":1}"#),
            (
                "S.event",
                br#"{"seq":1,"kind":"token","key":"a","revoked_at":1,"issuer":"a\u0000b"}"#,
            ),
            (
                "S.event",
                br#"{"seq":1,"kind":"nonsense","key":"a","revoked_at":1}"#,
            ),
        ] {
            assert!(
                matches!(decode("S", subject, payload), Message::Unreadable(_)),
                "{subject} {payload:?}"
            );
        }
        let huge = vec![b' '; MAX_MESSAGE + 1];
        assert!(matches!(decode("S", "S.event", &huge), Message::Unreadable(_)));
    }
}
