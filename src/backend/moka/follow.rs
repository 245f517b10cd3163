//! The follower of the ledger's change feed, and its supervisor.
//!
//! The follower loads the live set (mirror mode, once), subscribes to the feed from the last
//! position it applied, and applies every event and proof of sync to the tier. In mirror mode it
//! also reads the live set again while it follows: every `mirror_refresh`, so that what the
//! ledger purged leaves memory, and, after a fall-back to lookup mode, at the next resync and
//! then with a backoff, so that a mirror that fits again is promoted back. It runs until the
//! last `MokaCache` is dropped (or a reload in progress ends). If it ends for any other reason (the feed's stream ended, a
//! panic), the supervisor marks the tier as restarting, so that nothing is answered "not
//! revoked" from memory, counts and logs the restart, and starts a new follower, which resumes
//! from the same position, so no revocation is missed.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_core::Stream;
use tokio::task::JoinHandle;

use super::compact::{self, Overflow};
use super::{CacheMode, Tier};
use crate::backend::{FeedItem, Ledger, LiveRevocation, StoreError};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A follower that ran this long before it stopped is not in a crash loop: restart it at once.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often a mirror's load logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How often a mirror sheds the slots of expired revocations.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The first retry of a mirror that fell back (doubling up to `mirror_refresh`).
const FIRST_RELOAD_RETRY: Duration = Duration::from_secs(60);

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
            match load_mirror(&tier).await {
                Ok(seq) => {
                    tier.sync.set_cursor(seq);
                    tier.snapshot_loaded.store(true, Ordering::Release);
                }
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
    let mut reloads = match weak.upgrade() {
        Some(tier) => Reloads::new(&tier),
        None => return,
    };
    let mut reload: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut last_sweep = Instant::now();
    loop {
        let (next_reload, reload_due) = (reloads.next, reloads.mirror && reload.is_none());
        let item = tokio::select! {
            item = poll_fn(|cx| Pin::new(&mut feed).poll_next(cx)) => item,
            () = async { if let Some(running) = &mut reload { running.await } }, if reload.is_some() => {
                reload = None;
                let Some(tier) = weak.upgrade() else { return };
                reloads.schedule(&tier);
                continue;
            }
            () = tokio::time::sleep_until(next_reload.into()), if reload_due => {
                let Some(tier) = weak.upgrade() else { return };
                reloads.last = Instant::now();
                reload = Some(Box::pin(async move {
                    if let Err(error) = load_mirror(&tier).await {
                        tracing::warn!(%error, "reading the revocation mirror again failed; keeping what it holds");
                    }
                }));
                continue;
            }
        };
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
            FeedItem::InSync { .. } | FeedItem::InSyncAt { .. } => {
                let (last_seq, proved_at) = match item {
                    FeedItem::InSyncAt { last_seq, proved_at } => (last_seq, Some(proved_at)),
                    FeedItem::InSync { last_seq } => (last_seq, None),
                    _ => continue,
                };
                if std::mem::take(&mut forget_negatives_at_sync) {
                    tier.memory.forget_negatives();
                }
                if tier.sync.in_sync(last_seq, proved_at) {
                    tier.counters.resyncs.bump();
                    tracing::info!("revocation change feed back in sync");
                    reloads.after_resync(&tier);
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    tier.memory.compact().sweep();
                }
                tier.counters
                    .last_sync
                    .set(crate::backend::unix_seconds(proved_at.unwrap_or_else(SystemTime::now)) as f64);
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

/// Reads the live set a page at a time into a new compact table and swaps it in (or, if it
/// passes `mirror_max_entries`, turns the mirror off: lookup mode until a snapshot fits).
/// Returns the snapshot's `seq`. Writes applied while it reads are replayed into the new table,
/// so it may run while the feed is followed.
async fn load_mirror<B: Ledger>(tier: &Tier<B>) -> Result<i64, StoreError> {
    let (memory, started) = (&tier.memory, Instant::now());
    let mut build = memory.compact().build();
    let mut logged = started;
    let mut page = |records: Vec<LiveRevocation>| {
        let now = compact::now_seconds();
        for record in &records {
            build.add(memory.compact_entry(record), now);
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                read = build.read(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loading the revocation mirror"
            );
        }
    };
    let seq = tier.backend.snapshot_pages(&mut page).await?;
    let read = build.read();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let finished = memory.finish_load(build);
    match finished {
        Ok(()) => tracing::info!(
            read,
            live = memory.compact().len(),
            bytes = memory.compact().bytes(),
            elapsed_ms,
            "revocation mirror loaded"
        ),
        Err(Overflow) => tracing::warn!(
            read,
            mirror_max_entries = tier.mirror_max_entries,
            "live revocations exceed mirror_max_entries; using lookup mode instead of mirror until a snapshot fits"
        ),
    }
    tier.counters.snapshots.bump();
    tier.publish_state();
    Ok(seq)
}

/// When a mirror reads its live set again while it follows the feed.
struct Reloads {
    mirror: bool,
    next: Instant,
    retry: Duration,
    /// When the last reload started.
    last: Instant,
}

impl Reloads {
    fn new<B>(tier: &Tier<B>) -> Self {
        let mut reloads = Self {
            mirror: tier.mode == CacheMode::Mirror,
            next: Instant::now(),
            retry: FIRST_RELOAD_RETRY.min(tier.mirror_refresh),
            last: Instant::now(),
        };
        reloads.schedule(tier);
        reloads
    }

    /// The next reload: a refresh after `mirror_refresh` while mirroring, else a retry with a
    /// backoff that doubles up to `mirror_refresh`.
    fn schedule<B>(&mut self, tier: &Tier<B>) {
        if tier.memory.mirroring() {
            self.retry = FIRST_RELOAD_RETRY.min(tier.mirror_refresh);
            self.next = after(tier.mirror_refresh);
        } else {
            self.next = after(self.retry);
            self.retry = self.retry.saturating_mul(2).min(tier.mirror_refresh);
        }
    }

    /// A resync is the moment to try promoting a fallen-back mirror again, at most once a
    /// minute (a flapping feed must not make every instance re-read the ledger at each blip).
    fn after_resync<B>(&mut self, tier: &Tier<B>) {
        if self.mirror && !tier.memory.mirroring() {
            let soonest = self.last.checked_add(FIRST_RELOAD_RETRY).unwrap_or(self.next);
            self.next = self.next.min(soonest.max(Instant::now()));
        }
    }
}

/// `delay` from now; a delay past what `Instant` holds means "in a year" (and again then).
fn after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}
