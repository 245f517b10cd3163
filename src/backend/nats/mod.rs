//! Fan-out on NATS JetStream (feature `nats`): a [`Relay`] that publishes the Postgres ledger's
//! changes to a stream, and [`NatsLedger`], a [`Ledger`] whose change feed follows that stream
//! while everything else (lookups, snapshots, writes) still goes to Postgres, the source of truth.
//!
//! ```text
//! writers ─► Postgres ledger (source of truth, seq in commit order)
//!               │ LISTEN + heartbeat (PgStore's own feed: one direct connection per relay)
//!               ▼
//!           Relay ×2-3 ──publish(event, msg-id = seq; marker at each proof)──► JetStream stream
//!                                                                              │ one ordered
//!                                                                              │ consumer each
//!           instances: MokaCache<NatsLedger>: snapshot from Postgres once, then follow the stream
//!                      (a gap is repaired from Postgres; Postgres also confirms mirror hits)
//! ```
//!
//! Why: with [`PgStore`]'s feed every instance holds a `LISTEN` connection and proves sync with
//! a query every heartbeat, so a default Postgres (`max_connections = 100`) admits a few dozen
//! instances, and a thousand make the ledger answer hundreds of heartbeats a second. With the
//! stream, the relays alone read the Postgres feed; an instance opens Postgres connections for
//! its snapshot, for lookups and mirror confirmations, and for repairs, and (with a pool that
//! closes idle connections) holds none while idle.
//!
//! Which to pick: the Postgres feed for one to a few dozen instances (nothing more to run);
//! NATS past that, or when instances must not hold database connections. Staleness means the
//! same on both: a cached "not revoked" is trusted only within `max_staleness` of the last proof
//! of sync, which on this feed is the relay's marker, dated when the relay's proof began (so a
//! marker NATS delivers late is as old as it is; the relay's and instances' clocks must agree to
//! within what `max_staleness` tolerates). With every relay down no marker arrives: instances
//! stop proving sync, and `max_staleness` and the failure policy apply; once a relay is back,
//! it publishes from where the stream ends and instances repair what they missed from the ledger.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_jwt_revocation::backend::nats::{NatsLedger, Relay};
//! use tower_jwt_revocation::{CacheMode, MokaCache, PgStore};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! // In the relay process (two or three of them):
//! let store = PgStore::connect("postgres://app@db/app").await?;
//! let _relay = Relay::builder(store.clone(), nats.clone()).start()?;
//! // In every instance:
//! let ledger = NatsLedger::new(store, nats);
//! let cache = MokaCache::builder(ledger).mode(CacheMode::Mirror).start()?;
//! # drop(cache); Ok(()) }
//! ```

mod feed;
mod relay;
mod wire;

pub use feed::JetStreamFeed;
pub use relay::{DEFAULT_STREAM, Relay, RelayBuilder, RelayMetrics};

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;

use super::postgres::PgStore;
use super::{
    Ledger, LiveRevocation, Revocation, RevocationBackend, RevocationRecord, RevocationStore, Snapshot,
    StoreError, TokenFacts,
};

/// A [`Ledger`] on Postgres whose change feed is the relays' JetStream stream (see the module
/// documentation). Cheap to clone.
#[derive(Clone, Debug)]
pub struct NatsLedger {
    store: PgStore,
    jetstream: jetstream::Context,
    stream: String,
}

impl NatsLedger {
    /// Reads and writes `store`, and follows the stream [`DEFAULT_STREAM`] through `client`.
    pub fn new(store: PgStore, client: async_nats::Client) -> Self {
        Self {
            store,
            jetstream: jetstream::new(client),
            stream: DEFAULT_STREAM.to_owned(),
        }
    }

    /// Follows the stream `name` instead (the relays' [`stream`](RelayBuilder::stream)).
    #[must_use]
    pub fn with_stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The Postgres ledger behind it.
    pub fn store(&self) -> &PgStore {
        &self.store
    }
}

impl RevocationStore for NatsLedger {
    async fn revoke(&self, revocation: &Revocation<'_>) -> Result<bool, StoreError> {
        self.store.revoke(revocation).await
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.store.list_by_subject(subject, limit).await
    }

    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        self.store.purge_expired(margin).await
    }
}

/// Checks ask Postgres, as [`PgStore`] does (put a [`MokaCache`](crate::MokaCache) in front).
impl RevocationBackend for NatsLedger {
    type Future = <PgStore as RevocationBackend>::Future;

    fn try_check(&self, _: &TokenFacts<'_>) -> Option<Result<super::Verdict, StoreError>> {
        None
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        RevocationBackend::check(&self.store, facts)
    }

    fn issuer_keying(&self) -> bool {
        self.store.issuer_keying()
    }
}

impl Ledger for NatsLedger {
    type LookupFuture = <PgStore as Ledger>::LookupFuture;
    type Feed = JetStreamFeed;

    fn lookup(&self, facts: &TokenFacts<'_>) -> Self::LookupFuture {
        self.store.lookup(facts)
    }

    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        self.store.snapshot()
    }

    fn snapshot_pages<'a>(
        &'a self,
        page: &'a mut (dyn FnMut(Vec<LiveRevocation>) + Send),
    ) -> impl Future<Output = Result<i64, StoreError>> + Send + 'a {
        self.store.snapshot_pages(page)
    }

    /// Follows the stream from `after` (or from the ledger's end): see [`JetStreamFeed`]. Needs
    /// a Tokio runtime.
    fn feed(&self, after: Option<i64>) -> Result<JetStreamFeed, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("the JetStream feed needs a Tokio runtime"))?;
        let task = feed::FeedTask {
            store: self.store.clone(),
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
        };
        Ok(JetStreamFeed::spawn(&runtime, task, after))
    }

    fn issuer_keying(&self) -> bool {
        self.store.issuer_keying()
    }
}
