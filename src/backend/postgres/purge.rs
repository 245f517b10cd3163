//! [`spawn_purger`]: deleting expired revocations on a schedule, for any [`RevocationStore`].

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::{RevocationStore, StoreError};

/// A running purge task from [`spawn_purger`]; dropping it stops the task.
#[derive(Debug)]
pub struct Purger {
    task: JoinHandle<()>,
}

impl Purger {
    /// Stops the task now.
    pub fn cancel(self) {
        drop(self);
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs [`RevocationStore::purge_expired`]`(margin)` every `interval` on the current Tokio
/// runtime until the returned [`Purger`] is dropped. Errors are logged and retried at the next
/// tick. With [`PgStore`](super::PgStore), several instances may run purgers at once.
///
/// Needs a Tokio runtime and a positive `interval`; otherwise it returns an error.
pub fn spawn_purger<S>(store: S, interval: Duration, margin: Duration) -> Result<Purger, StoreError>
where
    S: RevocationStore + Clone,
{
    if interval.is_zero() {
        return Err(StoreError::InvalidInput("the purge interval must be positive"));
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
    let task = runtime.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.purge_expired(margin).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "purged expired revocations"),
                Err(error) => tracing::warn!(%error, "purging expired revocations failed"),
            }
        }
    });
    Ok(Purger { task })
}
