//! [`JetStreamFeed`]: a [`Ledger`](crate::Ledger)'s change feed read from the relays' stream,
//! with the same meaning as the Postgres feed: events in `seq` order with no gap, a proof of
//! sync only when every revocation committed before a moment has been delivered.
//!
//! At start (and each time it replaces its consumer) the feed creates a push consumer that
//! delivers what is published from then on (after the stream position it last handled, or the
//! last event and marker at first), and *then* reads the ledger past the last `seq` it
//! delivered: everything committed before that read is in it, everything published after the
//! consumer started comes through the stream, and what is in both is skipped by `seq`. While it
//! follows the stream:
//!
//! - an event whose `seq` it already delivered (a second relay's copy, a redelivery) is skipped;
//! - an event whose relay published something after the feed's position first (its `prev` is
//!   past it), or a marker naming a `seq` past it, means a message was lost: the feed reads the
//!   ledger past its position before going on (a repair, counted), and never skips a gap: while
//!   the ledger cannot answer, it delivers nothing more and proves nothing;
//! - a message it cannot read is treated as a lost one;
//! - a marker, once everything up to its `seq` is delivered, is a proof of sync dated when the
//!   relay's proof began ([`FeedItem::InSyncAt`]), so that staleness is measured from the ledger,
//!   not from when NATS delivered it. With every relay gone no marker arrives, and the cache's
//!   `max_staleness` and the failure policy apply as with a Postgres feed that cannot prove sync.
//!
//! NATS errors are reported once as [`FeedItem::Disconnected`]. The consumer is replaced, after a
//! jittered pause and with a repair from the ledger, when the connection comes back, when its
//! 1 s idle heartbeat is missed twice (the server lost it), after repeated errors, or after 10 s
//! with no marker; the replaced one is deleted. The feed owns one task, stopped when it is
//! dropped; its consumer is ephemeral (the server also removes it 10 s after nobody listens).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::wire::{self, Message};
use crate::backend::postgres::PgStore;
use crate::backend::{FeedItem, StoreError};
use crate::telemetry::{self, Count};

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events read per repair query.
const REPAIR_BATCH: i64 = 1_000;
/// How often the feed looks at its connection and at how long the stream has been silent.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// The consumer's idle heartbeat: one missed for twice this means the server lost it.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the server keeps a consumer nobody listens to.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(10);
/// How long deleting a replaced consumer may take before it is left to the threshold.
const DELETE_TIMEOUT: Duration = Duration::from_secs(1);
/// A stream silent this long (relays publish a marker every heartbeat of their Postgres feed,
/// 2 s by default) is followed from a new consumer, with a repair from the ledger; while every
/// relay is gone that costs each instance one consumer and one ledger query every 15 to 20 s.
const SILENCE: Duration = Duration::from_secs(10);
/// A consumer that lasted this long was healthy: the next failure backs off from the minimum.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Consecutive consumer errors after which it is replaced instead of waited for.
const ERRORS_BEFORE_REPLACING: u32 = 5;

/// The change feed of a [`NatsLedger`](super::NatsLedger) (see the module documentation).
#[derive(Debug)]
pub struct JetStreamFeed {
    receiver: mpsc::Receiver<FeedItem>,
    task: JoinHandle<()>,
}

impl Drop for JetStreamFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for JetStreamFeed {
    type Item = FeedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        self.receiver.poll_recv(cx)
    }
}

/// What the feed's task needs.
pub(super) struct FeedTask {
    pub(super) store: PgStore,
    pub(super) jetstream: jetstream::Context,
    pub(super) stream: String,
}

impl JetStreamFeed {
    pub(super) fn spawn(runtime: &tokio::runtime::Handle, task: FeedTask, after: Option<i64>) -> Self {
        let (sender, receiver) = mpsc::channel(1024);
        let follower = Follower {
            task,
            sender,
            last: after,
            stream_position: None,
            repairs: Count::new(telemetry::FEED_REPAIRS, &[]),
            connected: true,
        };
        Self {
            receiver,
            task: runtime.spawn(follower.run()),
        }
    }
}

/// Why following stopped for a moment.
enum Stop {
    /// The reader of the feed is gone: stop for good.
    Closed,
    /// NATS or the ledger failed: report it, wait, and start again.
    Failed(StoreError),
    /// Nothing arrived for [`SILENCE`] (every relay gone, or a consumer the server lost without
    /// a word): wait, and start again with a new consumer.
    Silent,
}

struct Follower {
    task: FeedTask,
    sender: mpsc::Sender<FeedItem>,
    /// The last `seq` delivered; `None` until the first read of the ledger.
    last: Option<i64>,
    /// The stream sequence of the last message handled, where a new consumer starts after.
    stream_position: Option<u64>,
    repairs: Count,
    /// Whether the last thing reported was not a disconnection.
    connected: bool,
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = self.follow().await;
            if started.elapsed() >= HEALTHY_RUN {
                backoff = MIN_BACKOFF;
            }
            match outcome {
                Err(Stop::Closed) => return,
                Err(Stop::Failed(error)) => {
                    if self.disconnected(error).await.is_err() {
                        return;
                    }
                }
                // A consumer replaced after a reconnection or a missed heartbeat.
                Ok(()) => {}
                // After a silence: from the stream's last messages, in case the position this
                // feed holds is one the stream will never reach again.
                Err(Stop::Silent) => self.stream_position = None,
            }
            // Every instance of a fleet gets here at the same moment (a NATS restart): spread
            // them out, over seconds, before each creates a consumer and reads the ledger; and
            // back off further while runs stay short (a flapping link).
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reports a disconnection once (until the next proof of sync).
    async fn disconnected(&mut self, error: StoreError) -> Result<(), Stop> {
        if std::mem::take(&mut self.connected) {
            self.send(FeedItem::Disconnected(error)).await?;
        }
        Ok(())
    }

    async fn send(&self, item: FeedItem) -> Result<(), Stop> {
        self.sender.send(item).await.map_err(|_| Stop::Closed)
    }

    /// One consumer's life: create it, catch up from the ledger, then follow it until it ends.
    async fn follow(&mut self) -> Result<(), Stop> {
        let stream = self
            .task
            .jetstream
            .get_stream(&self.task.stream)
            .await
            .map_err(nats_error)?;
        // A plain push consumer, which this feed replaces itself (after a reconnection, a
        // missed heartbeat, a silence) from the stream position it last handled, with jitter
        // across a fleet. (An ordered pull consumer was used first: in a fleet of 40 demo
        // processes about one delivery in 400 waited 4 to 5 s for a pull the client renewed
        // late, see `examples/fleet_demo.rs`. async-nats' ordered push consumer recreates itself
        // on a reconnection at once, beside the one this feed creates.)
        // A stream that ends before that position was recreated (or its store lost): its
        // sequence started again, and it is followed from its last messages.
        let stream_end = stream.cached_info().state.last_sequence;
        let deliver_policy = match self.stream_position.filter(|position| *position <= stream_end) {
            // Past what this feed already handled: no replay of the stream.
            Some(position) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: position.saturating_add(1),
            },
            // The last message of each subject (the latest event and marker), then what comes.
            None => consumer::DeliverPolicy::LastPerSubject,
        };
        let consumer = stream
            .create_consumer(consumer::push::Config {
                deliver_subject: self.task.jetstream.client().new_inbox(),
                filter_subject: format!("{}.>", self.task.stream),
                deliver_policy,
                ack_policy: consumer::AckPolicy::None,
                flow_control: true,
                idle_heartbeat: HEARTBEAT,
                // A consumer whose subscriber vanished without deleting it (a killed process)
                // is gone from the server this long after.
                inactive_threshold: INACTIVE_THRESHOLD,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let name = consumer.cached_info().name.clone();
        let outcome = self.follow_consumer(consumer).await;
        // Replaced: delete it now rather than leave it to the inactivity threshold (best effort;
        // after a NATS restart it may be gone already).
        let _ = tokio::time::timeout(DELETE_TIMEOUT, stream.delete_consumer(&name)).await;
        outcome
    }

    async fn follow_consumer(
        &mut self,
        consumer: consumer::Consumer<consumer::push::Config>,
    ) -> Result<(), Stop> {
        let mut messages = consumer.messages().await.map_err(nats_error)?;
        if self.last.is_none() {
            // A feed "from now": its position is the ledger's end.
            self.last = Some(self.task.store.max_seq().await.map_err(Stop::Failed)?);
        }
        // Keep this consumer while the ledger cannot answer (rather than a new one each retry).
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.repair().await {
                Ok(()) => break,
                Err(Stop::Failed(error)) => {
                    self.disconnected(error).await?;
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(stop) => return Err(stop),
            }
        }
        let client = self.task.jetstream.client();
        let (mut errors, mut was_down) = (0, false);
        let mut last_message = tokio::time::Instant::now();
        let mut watch = tokio::time::interval(WATCH_EVERY);
        loop {
            let message = tokio::select! {
                message = poll_next(&mut messages) => message,
                _ = watch.tick() => {
                    // A NATS server that restarted lost this ephemeral consumer, and the client
                    // does not always say so: after a reconnection, or a silence longer than
                    // relays ever keep, follow from a new consumer (and repair from the ledger).
                    match client.connection_state() {
                        async_nats::connection::State::Connected if was_down => return Ok(()),
                        async_nats::connection::State::Connected => {}
                        _ => {
                            if !was_down {
                                was_down = true;
                                let down = StoreError::Unavailable("the NATS connection is down".into());
                                self.disconnected(down).await?;
                            }
                        }
                    }
                    let silent = last_message.elapsed();
                    if silent >= SILENCE / 2 {
                        // No relay has proved anything for a while: say so (the cache stops
                        // trusting "not revoked" answers), as the Postgres feed does when its
                        // connection fails.
                        let quiet = StoreError::Unavailable("no marker from any relay".into());
                        self.disconnected(quiet).await?;
                    }
                    if silent >= SILENCE {
                        return Err(Stop::Silent);
                    }
                    continue;
                }
            };
            let Some(message) = message else { return Ok(()) };
            let message = match message {
                Ok(message) => message,
                Err(error) if error.kind() == consumer::push::MessagesErrorKind::MissingHeartbeat => {
                    // The server stopped sending to this consumer (lost with a restart, or
                    // deleted): report it and follow from a new one.
                    let lost = StoreError::Unavailable(Box::new(error));
                    self.disconnected(lost).await?;
                    return Ok(());
                }
                Err(error) => {
                    errors += 1;
                    if errors >= ERRORS_BEFORE_REPLACING {
                        return Err(Stop::Failed(StoreError::Unavailable(Box::new(error))));
                    }
                    self.disconnected(StoreError::Unavailable(Box::new(error)))
                        .await?;
                    continue;
                }
            };
            errors = 0;
            if let Ok(info) = message.info() {
                self.stream_position = Some(info.stream_sequence);
            }
            let payload = &message.message.payload;
            match wire::decode(&self.task.stream, message.message.subject.as_str(), payload) {
                Message::Event { event, prev } => {
                    if event.seq <= self.position() {
                        // A copy (a second relay's past the dedup window, a redelivery).
                        continue;
                    }
                    if prev == Some(self.position()) {
                        self.last = Some(event.seq);
                        self.send(FeedItem::Event(event)).await?;
                        continue;
                    }
                    // It does not follow from here: something before it was lost, or it names
                    // no predecessor. Everything real up to the ledger's end comes from the
                    // ledger, this event with it; what the ledger does not hold is not taken.
                    self.repair().await?;
                    if event.seq > self.position() {
                        tracing::warn!(
                            seq = event.seq,
                            "an event on the revocation stream that the ledger does not hold; ignored (is another ledger's relay publishing to this stream?)"
                        );
                    }
                }
                Message::Marker { last_seq, proved_at } => {
                    if last_seq > self.position() {
                        self.repair().await?;
                        let end = self.task.store.sequence_end().await.map_err(Stop::Failed)?;
                        if last_seq > end {
                            // A proof for a ledger this one is not (or not any more): proves
                            // nothing here.
                            tracing::warn!(
                                last_seq,
                                ledger_seq = end,
                                "a marker on the revocation stream past the ledger's sequence; not a proof of sync (is another ledger's relay publishing to this stream?)"
                            );
                            self.disconnected(StoreError::Unavailable(
                                "the stream's markers name a seq past the ledger's".into(),
                            ))
                            .await?;
                            continue;
                        }
                        self.reached(last_seq);
                    }
                    self.connected = true;
                    let last_seq = self.position();
                    self.send(FeedItem::InSyncAt { last_seq, proved_at }).await?;
                }
                Message::Unreadable(what) => {
                    tracing::warn!(
                        what,
                        "unreadable message on the revocation stream; reading the ledger instead"
                    );
                    self.repair().await?;
                }
            }
            // Silence counts from when a message was handled, not when it arrived (a repair may
            // take a while).
            last_message = tokio::time::Instant::now();
            watch.reset();
        }
    }

    fn position(&self) -> i64 {
        self.last.unwrap_or(i64::MIN)
    }

    /// After a repair read the ledger through `seq`: every event up to it that exists was
    /// delivered (`seq` is drawn in commit order, so none at or below a visible one commits
    /// later), whether or not a row with that `seq` still exists (a purged one does not).
    fn reached(&mut self, seq: i64) {
        self.last = Some(self.position().max(seq));
    }

    /// Delivers every ledger event past the position, in `seq` order, through the ledger's end.
    /// A repair that fails delivers what it read and reports the failure: the gap is never
    /// skipped.
    async fn repair(&mut self) -> Result<(), Stop> {
        let mut repaired = false;
        loop {
            let after = self.position();
            let events = self
                .task
                .store
                .events_since(after, REPAIR_BATCH)
                .await
                .map_err(Stop::Failed)?;
            let full = events.len() as i64 >= REPAIR_BATCH;
            for event in events {
                repaired = true;
                self.last = Some(event.seq);
                self.send(FeedItem::Event(event)).await?;
            }
            if !full {
                self.count_repair(repaired);
                return Ok(());
            }
        }
    }

    fn count_repair(&self, repaired: bool) {
        if repaired {
            self.repairs.bump();
        }
    }
}

/// `base` plus up to as much again, at random.
fn jittered(base: Duration) -> Duration {
    let fraction = f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX);
    base.mul_f64(1.0 + fraction)
}

fn nats_error(error: impl std::error::Error + Send + Sync + 'static) -> Stop {
    Stop::Failed(StoreError::Unavailable(Box::new(error)))
}

/// The next item of a `Stream` (without a `StreamExt` dependency).
async fn poll_next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}
