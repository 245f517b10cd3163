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
/// until the returned [`Purger`] is dropped; the first run is at once. Errors are logged and
/// retried at the next tick. With `PgStore` and `PgSessions`, several instances may run purgers
/// at once.
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
    let task = runtime.spawn(async move {
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
