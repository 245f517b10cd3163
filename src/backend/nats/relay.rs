//! [`Relay`]: follows the Postgres ledger's own change feed and publishes every event, and a
//! marker at every proof of sync, to a JetStream stream.
//!
//! A relay is the only reader of the Postgres feed in a fleet that fans out through NATS (one
//! direct connection each). Run two or three for availability: they are redundant, not elected.
//! Each event is published with its ledger `seq` as the message id, so JetStream keeps the first
//! copy and drops the others within the stream's duplicate window; past it, a late copy is one
//! more message every reader skips by `seq`.
//!
//! The relay resumes where the stream ends (the `seq` of its last event), so that a restarted
//! relay republishes nothing it or another relay already published, and a relay that starts on an
//! empty stream starts at the ledger's end (instances load what came before from their
//! snapshot). When publishing fails (NATS down, no ack within the client's timeout) the relay
//! drops its Postgres subscription and starts again from the last event the stream holds:
//! nothing is skipped. Up to 256 events are in flight at once (acknowledged in the order they
//! were sent); every one is acknowledged before the next marker is published. It owns one task, stopped when the [`Relay`] is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::wire;
use crate::backend::postgres::PgStore;
use crate::backend::{FeedItem, RevocationEvent, StoreError};
use crate::telemetry::{self, Count, Level};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Events published before the relay waits for the oldest acknowledgement: JetStream stores a
/// connection's messages in the order they were sent, so acknowledgements settle in order, and
/// a burst is not one round trip per event.
const PUBLISH_WINDOW: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The default stream name (the demo's `NATS_STREAM`).
pub const DEFAULT_STREAM: &str = "JWT_REVOCATIONS";

/// Configures and starts a [`Relay`].
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    store: PgStore,
    client: async_nats::Client,
    stream: String,
    replicas: usize,
    max_age: Duration,
    duplicate_window: Duration,
    name: String,
}

impl RelayBuilder {
    /// The stream's name (default [`DEFAULT_STREAM`]); its subjects are `{name}.event` and
    /// `{name}.sync`. Every relay and instance of a fleet names the same one.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// Replicas of the stream when the relay creates it (default 1; 3 on a NATS cluster of three
    /// or more). An existing stream keeps its configuration.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How long the stream keeps messages when the relay creates it (default 24 h). An instance
    /// that resumes after being away longer than this, or whose position the stream no longer
    /// holds, repairs from the ledger instead: this bounds what the stream stores, not
    /// correctness.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age.max(Duration::from_secs(1));
        self
    }

    /// How long JetStream remembers a message id to drop a second relay's copy (default 2 min):
    /// longer than relays can drift apart.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window.max(Duration::from_secs(1));
        self
    }

    /// The relay's name in its markers and logs (default `relay`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the relay's task on the current Tokio runtime. Fails outside one.
    pub fn start(self) -> Result<Relay, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("a relay needs a Tokio runtime"))?;
        let state = Arc::new(RelayState::default());
        let task = runtime.spawn(run(self, Arc::clone(&state)));
        Ok(Relay { state, task })
    }
}

/// A running relay (see the module documentation). Dropping it stops it.
pub struct Relay {
    state: Arc<RelayState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("metrics", &self.metrics()).finish()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a relay has done so far, read with [`Relay::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayMetrics {
    /// Events JetStream stored from this relay.
    pub published: u64,
    /// Events JetStream dropped as another relay's (or an earlier run's) copy.
    pub deduplicated: u64,
    /// Markers published.
    pub markers: u64,
    /// The highest ledger `seq` the relay has seen.
    pub ledger_seq: i64,
    /// The highest `seq` JetStream acknowledged from it.
    pub published_seq: i64,
    /// Whether it is publishing: it has published a marker since it last (re)started.
    pub ready: bool,
}

struct RelayState {
    published: Count,
    deduplicated: Count,
    markers: Count,
    lag: Level,
    ledger_seq: AtomicI64,
    published_seq: AtomicI64,
    ready: AtomicBool,
}

impl Default for RelayState {
    fn default() -> Self {
        telemetry::describe();
        Self {
            published: Count::new(telemetry::RELAY_PUBLISHED, &[("outcome", "stored")]),
            deduplicated: Count::new(telemetry::RELAY_PUBLISHED, &[("outcome", "duplicate")]),
            markers: Count::new(telemetry::RELAY_MARKERS, &[]),
            lag: Level::new(telemetry::RELAY_LAG),
            ledger_seq: AtomicI64::new(0),
            published_seq: AtomicI64::new(0),
            ready: AtomicBool::new(false),
        }
    }
}

impl RelayState {
    fn saw(&self, seq: i64) {
        self.ledger_seq.fetch_max(seq, Ordering::Relaxed);
        self.publish_lag();
    }

    fn published(&self, seq: i64) {
        self.published_seq.fetch_max(seq, Ordering::Relaxed);
        self.publish_lag();
    }

    fn publish_lag(&self) {
        let lag = self.ledger_seq.load(Ordering::Relaxed) - self.published_seq.load(Ordering::Relaxed);
        self.lag.set(lag.max(0) as f64);
    }
}

impl Relay {
    /// A relay of `store`'s ledger to JetStream through `client`.
    pub fn builder(store: PgStore, client: async_nats::Client) -> RelayBuilder {
        RelayBuilder {
            store,
            client,
            stream: DEFAULT_STREAM.to_owned(),
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            name: "relay".to_owned(),
        }
    }

    /// Its counters so far.
    pub fn metrics(&self) -> RelayMetrics {
        let state = &self.state;
        RelayMetrics {
            published: state.published.get(),
            deduplicated: state.deduplicated.get(),
            markers: state.markers.get(),
            ledger_seq: state.ledger_seq.load(Ordering::Relaxed),
            published_seq: state.published_seq.load(Ordering::Relaxed),
            ready: state.ready.load(Ordering::Relaxed),
        }
    }

    /// Whether it is publishing (for a readiness probe).
    pub fn is_ready(&self) -> bool {
        self.state.ready.load(Ordering::Relaxed)
    }
}

/// Why one run of the relay ended.
#[derive(Debug)]
enum Stop {
    Nats(String),
    Ledger(StoreError),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Nats(error) => write!(f, "NATS: {error}"),
            Stop::Ledger(error) => write!(f, "ledger: {error}"),
        }
    }
}

async fn run(config: RelayBuilder, state: Arc<RelayState>) {
    let jetstream = jetstream::new(config.client.clone());
    let mut backoff = MIN_BACKOFF;
    loop {
        state.ready.store(false, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcome = relay_once(&config, &jetstream, &state).await;
        if started.elapsed() >= Duration::from_secs(60) {
            backoff = MIN_BACKOFF;
        }
        match outcome {
            Ok(()) => tokio::time::sleep(MIN_BACKOFF).await,
            Err(stop) => {
                tracing::warn!(relay = %config.name, %stop, "revocation relay stopped publishing; starting again from the last event acknowledged");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Creates the stream when missing, finds where it ends, and publishes from there until
/// something fails (or the Postgres feed ends: `Ok`).
async fn relay_once(
    config: &RelayBuilder,
    jetstream: &jetstream::Context,
    state: &RelayState,
) -> Result<(), Stop> {
    let event_subject = wire::event_subject(&config.stream);
    let sync_subject = wire::sync_subject(&config.stream);
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![event_subject.clone(), sync_subject.clone()],
            max_age: config.max_age,
            duplicate_window: config.duplicate_window,
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|error| Stop::Nats(error.to_string()))?;
    let resume = match stream.get_last_raw_message_by_subject(&event_subject).await {
        Ok(last) => match wire::decode(&config.stream, last.subject.as_str(), &last.payload) {
            wire::Message::Event { event, .. } => Some(event.seq),
            // A message this build cannot read: start where the ledger ends (instances repair).
            _ => None,
        },
        Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(error) => return Err(Stop::Nats(error.to_string())),
    };
    // Never past the ledger's own sequence: a stream whose last event names a later `seq` (a
    // ledger restored to an earlier point, another ledger's relay on the same stream) would make
    // this relay publish nothing new.
    let end = config.store.sequence_end().await.map_err(Stop::Ledger)?;
    let resume = match resume {
        Some(seq) if seq <= end => seq,
        Some(seq) => {
            tracing::warn!(relay = %config.name, stream_seq = seq, ledger_seq = end, "the stream's last event is past the ledger's sequence; publishing from the ledger's end (is another ledger's relay publishing to this stream?)");
            config.store.max_seq().await.map_err(Stop::Ledger)?
        }
        None => config.store.max_seq().await.map_err(Stop::Ledger)?,
    };
    let mut feed = config.store.subscribe_from(resume).map_err(Stop::Ledger)?;
    let mut prev = resume;
    let mut in_flight = VecDeque::new();
    state.saw(resume);
    state.published(resume);
    tracing::info!(relay = %config.name, stream = %config.stream, after = resume, "revocation relay publishing");
    while let Some(item) = feed.next().await {
        match item {
            FeedItem::Event(event) => {
                state.saw(event.seq);
                if event.seq <= prev {
                    continue;
                }
                let ack = publish_event(jetstream, &event_subject, &event, prev).await?;
                in_flight.push_back((event.seq, ack));
                if in_flight.len() >= PUBLISH_WINDOW {
                    settle_one(&mut in_flight, state).await?;
                }
                prev = event.seq;
            }
            FeedItem::InSync { .. } | FeedItem::InSyncAt { .. } => {
                // The proof is as old as its read of the ledger (a feed that does not say when
                // that was began it no later than now).
                let (last_seq, proved_at) = match item {
                    FeedItem::InSyncAt { last_seq, proved_at } => (last_seq, proved_at),
                    FeedItem::InSync { last_seq } => (last_seq, SystemTime::now()),
                    _ => continue,
                };
                state.saw(last_seq);
                // Every event before the marker is stored before it is published.
                while !in_flight.is_empty() {
                    settle_one(&mut in_flight, state).await?;
                }
                let body = wire::encode_marker(last_seq.max(prev), proved_at, &config.name);
                jetstream
                    .publish(sync_subject.clone(), Bytes::from(body))
                    .await
                    .map_err(|error| Stop::Nats(error.to_string()))?
                    .await
                    .map_err(|error| Stop::Nats(error.to_string()))?;
                state.markers.bump();
                state.ready.store(true, Ordering::Relaxed);
            }
            FeedItem::Disconnected(error) => {
                // No marker until the feed proves sync again.
                state.ready.store(false, Ordering::Relaxed);
                tracing::warn!(relay = %config.name, %error, "revocation relay's ledger feed disconnected");
            }
        }
    }
    Ok(())
}

/// Sends `event` (published after `prev`) and returns the future of its acknowledgement.
async fn publish_event(
    jetstream: &jetstream::Context,
    subject: &str,
    event: &RevocationEvent,
    prev: i64,
) -> Result<PublishAckFuture, Stop> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        wire::message_id(event.seq).as_str(),
    );
    let body = Bytes::from(wire::encode_event(event, Some(prev)));
    jetstream
        .publish_with_headers(subject.to_owned(), headers, body)
        .await
        .map_err(|error| Stop::Nats(error.to_string()))
}

/// Waits for the oldest acknowledgement in flight. They are settled in publishing order, so the
/// relay's published `seq` only moves past events JetStream stored (or dropped as copies).
async fn settle_one(
    in_flight: &mut VecDeque<(i64, PublishAckFuture)>,
    state: &RelayState,
) -> Result<(), Stop> {
    let Some((seq, ack)) = in_flight.pop_front() else {
        return Ok(());
    };
    let ack = ack.await.map_err(|error| Stop::Nats(error.to_string()))?;
    if ack.duplicate {
        state.deduplicated.bump();
    } else {
        state.published.bump();
    }
    state.published(seq);
    Ok(())
}
