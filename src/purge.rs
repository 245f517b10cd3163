//! Deleting what has expired, for every store: [`Purge`], and (feature `tokio`, on with
//! `postgres` and `moka`) `spawn_purger`, which runs it on a schedule.
//!
//! Revocation stores ([`MemoryStore`](crate::MemoryStore), `PgStore`, `MokaCache`: every
//! [`RevocationStore`]) and session stores (`MemorySessions`, `PgSessions`) keep records only
//! until the tokens they cover have expired; a purge deletes the older ones, so memory and tables
//! stay proportional to what is live. One purger type drives any of them.

use std::future::Future;
use std::time::Duration;

use crate::backend::{RevocationStore, StoreError};

/// A store whose expired records can be deleted.
pub trait Purge: Send + Sync + 'static {
    /// Deletes the records that expired more than `margin` ago and returns how many. `margin`
    /// should be at least the validation leeway, so a record is never dropped while a token it
    /// covers could still be accepted.
    fn purge(&self, margin: Duration) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Every revocation store purges through [`RevocationStore::purge_expired`].
impl<S: RevocationStore> Purge for S {
    fn purge(&self, margin: Duration) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.purge_expired(margin)
    }
}

/// A running purge task from [`spawn_purger`]; dropping it stops the task.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct Purger {
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "tokio")]
impl Purger {
    /// Stops the task now.
    pub fn cancel(self) {
        drop(self);
    }
}

#[cfg(feature = "tokio")]
impl Drop for Purger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs [`Purge::purge`]`(margin)` on `store` every `interval` on the current Tokio runtime
/// until the returned [`Purger`] is dropped. The first run is at a random moment within the
/// first `interval`, so a fleet started together spreads its purges (and the database
/// connections they take) over the interval instead of purging all at once. Errors are logged
/// and retried at the next tick. With `PgStore` and `PgSessions`, several instances may run
/// purgers at once.
///
/// Needs a Tokio runtime and a positive `interval`; otherwise it returns
/// [`StoreError::Config`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_jwt_revocation::StoreError> {
/// use std::time::Duration;
/// use tower_jwt_revocation::session::{MemorySessions, SessionConfig};
/// use tower_jwt_revocation::{MemoryStore, spawn_purger};
///
/// let store = MemoryStore::new();
/// let sessions = MemorySessions::new(store.clone(), SessionConfig::default());
/// let hour = Duration::from_secs(3600);
/// let _revocations = spawn_purger(store, Duration::from_secs(600), hour)?;
/// let _sessions = spawn_purger(sessions, Duration::from_secs(600), hour)?;
/// # Ok(()) }
/// ```
#[cfg(feature = "tokio")]
pub fn spawn_purger<P>(store: P, interval: Duration, margin: Duration) -> Result<Purger, StoreError>
where
    P: Purge,
{
    if interval.is_zero() {
        return Err(StoreError::Config("the purge interval must be positive"));
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Config("needs a Tokio runtime (call it from within one)"))?;
    let first = interval.mul_f64(f64::from(getrandom::u32().unwrap_or(0)) / (f64::from(u32::MAX) + 1.0));
    let task = runtime.spawn(async move {
        tokio::time::sleep(first).await;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.purge(margin).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "purged expired records"),
                Err(error) => tracing::warn!(%error, "purging expired records failed"),
            }
        }
    });
    Ok(Purger { task })
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl Purge for Counting {
        async fn purge(&self, _: Duration) -> Result<u64, StoreError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        }
    }

    /// A fleet started together does not purge together: each purger's first run is somewhere
    /// in its first interval (on `main` every one ran at once, each taking a database
    /// connection in the same instant), and every one has run once by its end.
    #[tokio::test(start_paused = true)]
    async fn first_runs_spread_over_the_first_interval() {
        let runs = Counting::default();
        let hour = Duration::from_secs(3600);
        let purgers: Vec<_> = (0..16)
            .map(|_| spawn_purger(runs.clone(), hour, Duration::ZERO).unwrap())
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let early = runs.0.load(Ordering::SeqCst);
        assert!(early < 16, "{early} of 16 purgers ran in their first second");
        // The rest of the first interval (a purger that started in the first second runs
        // again only one interval after it).
        tokio::time::advance(hour - Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            runs.0.load(Ordering::SeqCst),
            16,
            "each ran once in its first interval"
        );
        drop(purgers);
    }
}
