//! The follower of the ledger's change feed, and its supervisor.
//!
//! The follower loads the live set (mirror mode, once), subscribes to the feed from the last
//! position it applied, and applies every event and proof of sync to the tier. It runs until the
//! last `MokaCache` is dropped. If it ends for any other reason (the feed's stream ended, a
//! panic), the supervisor marks the tier as restarting, so that nothing is answered "not
//! revoked" from memory, counts and logs the restart, and starts a new follower, which resumes
//! from the same position, so no revocation is missed.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_core::Stream;
use tokio::task::JoinHandle;

use super::{CacheMode, Tier};
use crate::backend::{FeedItem, Ledger, RevocationKind, Snapshot};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A follower that ran this long before it stopped is not in a crash loop: restart it at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Aborts the task when dropped, so an aborted supervisor takes its follower with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs followers one after another until the tier is dropped.
pub(super) async fn supervise<B: Ledger>(weak: Weak<Tier<B>>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let mut follower = AbortOnDrop(tokio::spawn(follow(weak.clone())));
        let ended = (&mut follower.0).await;
        let Some(tier) = weak.upgrade() else { return };
        tier.sync.restarting();
        tier.counters.feed_restarts.bump();
        tier.publish_state();
        let panicked = ended.as_ref().is_err_and(|error| error.is_panic());
        tracing::warn!(
            panicked,
            restarts = tier.counters.feed_restarts.get(),
            "revocation change feed follower stopped; restarting it (no \"not revoked\" answers from memory until it is in sync)"
        );
        drop(tier);
        if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows the ledger: (mirror) load the live set, then apply the feed. Holds only a weak
/// reference, so dropping the last `MokaCache` ends it at the next item.
async fn follow<B: Ledger>(weak: Weak<Tier<B>>) {
    let mut backoff = MIN_BACKOFF;
    let (mut feed, from_now) = loop {
        let Some(tier) = weak.upgrade() else { return };
        if tier.mode == CacheMode::Mirror && !tier.snapshot_loaded.load(Ordering::Acquire) {
            match tier.backend.snapshot().await {
                Ok(snapshot) => load(&tier, &snapshot),
                Err(error) => {
                    tracing::warn!(%error, "loading the revocation mirror failed; retrying");
                    drop(tier);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let after = tier.sync.cursor();
        match tier.backend.feed(after) {
            Ok(feed) => break (feed, after.is_none()),
            Err(error) => {
                tracing::warn!(%error, "subscribing to revocation changes failed; retrying");
                drop(tier);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    // A feed that starts "from now" never delivers what was revoked before that moment: a
    // negative looked up earlier may be stale, so none survives the first sync.
    let mut forget_negatives_at_sync = from_now;
    loop {
        let item = poll_fn(|cx| Pin::new(&mut feed).poll_next(cx)).await;
        let (Some(item), Some(tier)) = (item, weak.upgrade()) else {
            return;
        };
        match item {
            FeedItem::Event(event) => {
                tier.memory.apply(&event.record);
                tier.sync.set_cursor(event.seq);
                tier.counters.events_applied.bump();
                let lag = SystemTime::now()
                    .duration_since(event.record.revoked_at)
                    .unwrap_or_default();
                let lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
                tier.counters.last_propagation_ms.store(lag_ms, Ordering::Relaxed);
                tier.counters
                    .max_propagation_ms
                    .fetch_max(lag_ms, Ordering::Relaxed);
                tier.counters.lag.record(lag.as_secs_f64());
            }
            FeedItem::InSync { last_seq } => {
                if std::mem::take(&mut forget_negatives_at_sync) {
                    tier.memory.forget_negatives();
                }
                if tier.sync.in_sync(last_seq) {
                    tier.counters.resyncs.bump();
                    tracing::info!("revocation change feed back in sync");
                }
                tier.counters
                    .last_sync
                    .set(crate::backend::unix_seconds(SystemTime::now()) as f64);
                tier.publish_state();
            }
            FeedItem::Disconnected(error) => {
                if tier.sync.disconnected() {
                    tracing::warn!(%error, "revocation change feed disconnected; not trusting cached negatives");
                    tier.publish_state();
                }
            }
        }
    }
}

/// Applies a mirror's snapshot and decides whether the mirror is complete.
fn load<B>(tier: &Tier<B>, snapshot: &Snapshot) {
    let count = |kind| {
        snapshot
            .records
            .iter()
            .filter(|record| record.kind == kind)
            .count() as u64
    };
    let fits = [
        RevocationKind::Token,
        RevocationKind::Session,
        RevocationKind::Subject,
    ]
    .into_iter()
    .all(|kind| count(kind) <= tier.max_capacity);
    let evicted_before = tier.memory.evicted();
    for record in &snapshot.records {
        tier.memory.apply(record);
    }
    tier.sync.set_cursor(snapshot.seq);
    tier.snapshot_loaded.store(true, Ordering::Release);
    // An eviction while loading (memory already held entries the snapshot lacks) happened
    // before mirroring was on, so the eviction listener could not turn it off.
    let fits = fits && tier.memory.evicted() == evicted_before;
    if fits {
        tier.memory.set_mirroring(true);
    } else {
        tracing::warn!(
            live = snapshot.records.len(),
            max_capacity = tier.max_capacity,
            "live revocations exceed the cache capacity; using lookup mode instead of mirror"
        );
    }
}
