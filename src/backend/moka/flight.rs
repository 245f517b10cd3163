//! Single flight: concurrent misses for the same token keys share one ledger lookup.
//!
//! The first check for a set of keys starts a flight; the others join it and wait for its
//! answer, unless a revocation was filed in memory since it started (the flight's
//! *generation*): its lookup may have read the ledger before that revocation committed, so a
//! check that arrives after this instance learned of it (its own logout, say) starts a new
//! flight instead of taking the old answer. The generation counts every revocation filed, not
//! only those of the flight's keys: under a storm of R revocations a second, checks of one key
//! that memory cannot answer share a lookup only within each interval between two of them, so
//! they cost up to R more lookups a second (never more than the checks themselves). A waiter that is cancelled (its client went away) hands the lookup to the next waiter
//! (`OnceCell` semantics), and the last one to leave, answered or not, removes the flight, so an
//! abandoned lookup leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OnceCell;

use crate::backend::{Lookup, StoreError, TokenFacts};

/// A lookup's answer as every waiter receives it.
pub(super) type SharedLookup = Result<Lookup, Arc<StoreError>>;

/// The key of a flight: a token's three keys together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TokenKeys {
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    issuer: Option<String>,
}

impl TokenKeys {
    pub(super) fn of(facts: &TokenFacts<'_>) -> Self {
        Self {
            jti: facts.jti.map(str::to_owned),
            sid: facts.session_id.map(str::to_owned),
            sub: facts.subject.map(str::to_owned),
            issuer: facts.issuer.map(str::to_owned),
        }
    }

    pub(super) fn facts(&self, issued_at: Option<u64>, expires_at: Option<u64>) -> TokenFacts<'_> {
        TokenFacts {
            jti: self.jti.as_deref(),
            session_id: self.sid.as_deref(),
            subject: self.sub.as_deref(),
            issued_at,
            expires_at,
            issuer: self.issuer.as_deref(),
        }
    }
}

type Cell = Arc<OnceCell<SharedLookup>>;

/// The flights in progress, each with the generation it started in.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<TokenKeys, (u64, Cell)>>,
}

/// One check's place in a flight; dropping it (answered or cancelled) leaves the flight, and the
/// last to leave removes it.
pub(super) struct Flight<'a> {
    flights: &'a Flights,
    key: TokenKeys,
    /// `Some` until dropped; released under the lock, so counts read under it are exact.
    cell: Option<Cell>,
    /// Whether this check joined a flight another check started.
    pub(super) joined: bool,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKeys, (u64, Cell)>> {
        // Every critical section is a single map operation: a panic cannot leave it half-done.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the flight for `key` if it started in `generation` (the count of revocations filed
    /// in memory, read by the caller now), or starts one, which takes the place of an older
    /// flight for the same keys (whose waiters keep theirs). Before starting, `answered` is
    /// asked (under the lock) whether memory can answer now: a flight that just ended remembered
    /// its answer before leaving, so a check arriving after it must not send another lookup.
    pub(super) fn join<T>(
        &self,
        key: TokenKeys,
        generation: u64,
        answered: impl FnOnce() -> Option<T>,
    ) -> Result<Flight<'_>, T> {
        let mut map = self.lock();
        if let Some((_, cell)) = map.get(&key).filter(|(started, _)| *started == generation) {
            let cell = Arc::clone(cell);
            return Ok(Flight {
                flights: self,
                key,
                cell: Some(cell),
                joined: true,
            });
        }
        if let Some(answer) = answered() {
            return Err(answer);
        }
        let cell = Cell::default();
        map.insert(key.clone(), (generation, Arc::clone(&cell)));
        Ok(Flight {
            flights: self,
            key,
            cell: Some(cell),
            joined: false,
        })
    }

    /// Flights in progress.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Flight<'_> {
    /// The flight's answer, computed by `lookup` if no other waiter has done so.
    pub(super) async fn answer<F>(&self, lookup: impl FnOnce() -> F) -> SharedLookup
    where
        F: std::future::Future<Output = SharedLookup>,
    {
        match &self.cell {
            Some(cell) => cell.get_or_init(lookup).await.clone(),
            None => lookup().await,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let Some(cell) = self.cell.take() else { return };
        // Every waiter takes and releases its reference under this lock, so the count is exact
        // here: the map's reference and this one mean nobody else waits.
        let leaving_last = Arc::strong_count(&cell) <= 2;
        if (leaving_last || cell.initialized())
            && map
                .get(&self.key)
                .is_some_and(|(_, current)| Arc::ptr_eq(current, &cell))
        {
            map.remove(&self.key);
        }
        drop(cell);
    }
}
