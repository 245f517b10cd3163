//! [`Subscription`]: the change feed of a [`PgStore`](super::PgStore).
//!
//! A task holds one connection (the store's direct connection when it has one, see
//! [`PgStore::with_direct_url`](super::PgStore::with_direct_url)) that `LISTEN`s on
//! [`CHANNEL`] and reads the ledger past the last `seq` it delivered:
//!
//! - at connect (after `LISTEN`, so nothing committed from then on can be missed);
//! - on every notification that names a `seq` past that point (a notification only wakes the
//!   feed; what it delivers always comes from the ledger, in `seq` order);
//! - at every heartbeat. This read is the **proof of sync**: once it returns, every revocation
//!   committed before it was sent has been delivered, and the feed reports
//!   [`FeedItem::InSyncAt`], dated when that read began. It does not depend on notifications arriving, which they do not
//!   through a proxy that drops them or a disabled trigger.
//!
//! Through a transaction pooler (the pool's connections, when they send inlined statements and
//! there is no direct connection) the feed does not `LISTEN` at all: the registration would stay
//! on a server connection that other clients then use, and their queries would receive the
//! notifications. It then relies on the heartbeat alone.
//!
//! Every query is bounded by the store's timeout; a connection that fails or does not answer
//! (a blackholed peer sends no FIN and no RST) is reported as [`FeedItem::Disconnected`] and
//! replaced by a fresh one, from a pool of its own, so the half-dead one can never hold what the
//! next connection needs. Dropping the [`Subscription`] stops the task.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Acquire, Row};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sql::{EVENTS_SINCE, MAX_SEQ, Protocol, Statement, bounded, classify, event_from_row};
use crate::backend::{FeedItem, StoreError};

/// The `LISTEN` channel the ledger's triggers notify.
pub const CHANNEL: &str = "jwt_revocation";

/// Events read per catch-up query.
const CATCH_UP_BATCH: i64 = 1_000;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the feed's task needs to know.
#[derive(Debug, Clone)]
pub(super) struct FeedConfig {
    /// The connection to `LISTEN` and read on.
    pub(super) options: PgConnectOptions,
    /// How statements are sent on it.
    pub(super) protocol: Protocol,
    /// Whether to `LISTEN` on it: never through a transaction pooler, which would leave the
    /// registration on a server connection other clients then use (their queries receive the
    /// notifications, which sqlx treats as a protocol error).
    pub(super) listen: bool,
    /// Bounds connecting and every query.
    pub(super) timeout: Duration,
    /// How often sync is proved.
    pub(super) heartbeat: Duration,
}

/// A change feed of the ledger, from [`PgStore::subscribe`](super::PgStore::subscribe): see the
/// module documentation. Events arrive in `seq` order, each at least once; a
/// [`FeedItem::InSyncAt`] follows every catch-up and every heartbeat.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<FeedItem>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Starts the feed's task on `runtime`, delivering every event past `after` (or past the
    /// ledger's end at connect time, when `None`).
    pub(super) fn spawn(runtime: &tokio::runtime::Handle, config: FeedConfig, after: Option<i64>) -> Self {
        let (sender, receiver) = mpsc::channel(1024);
        let feed = Feed {
            config,
            sender,
            last_seq: after,
        };
        Self {
            receiver,
            task: runtime.spawn(feed.run()),
        }
    }

    /// The next item; `None` only if the feed's task ended (which it does not while the
    /// subscription lives, short of a panic).
    pub async fn next(&mut self) -> Option<FeedItem> {
        self.receiver.recv().await
    }
}

impl futures_core::Stream for Subscription {
    type Item = FeedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one connection's life ended.
enum Stop {
    /// The subscriber dropped the [`Subscription`]: the task ends.
    Gone,
    /// The connection failed: report it, and connect again.
    Failed(StoreError),
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Self {
        Stop::Failed(error)
    }
}

/// The feed's task state: where it is, and where it sends.
struct Feed {
    config: FeedConfig,
    sender: mpsc::Sender<FeedItem>,
    last_seq: Option<i64>,
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Err(stop) = self.connection_life(&mut backoff).await;
            let Stop::Failed(error) = stop else { return };
            if self.send(FeedItem::Disconnected(error)).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: `LISTEN`, catch up, prove sync, then follow notifications and
    /// heartbeats until the connection fails or the subscriber is gone.
    async fn connection_life(&mut self, backoff: &mut Duration) -> Result<Infallible, Stop> {
        let timeout = self.config.timeout;
        // A pool of its own for every connection: see the module documentation.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .connect_lazy_with(self.config.options.clone());
        let listen = self.config.listen;
        let mut listener = bounded(timeout, async {
            let mut listener = PgListener::connect_with(&pool).await?;
            if listen {
                listener.listen(CHANNEL).await?;
            }
            Ok(listener)
        })
        .await?;
        let read_started = SystemTime::now();
        self.catch_up(&mut listener).await?;
        self.in_sync(read_started).await?;
        *backoff = MIN_BACKOFF;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                // `try_recv` is cancel-safe (sqlx keeps partial messages in its buffer), so
                // losing the race to the heartbeat drops nothing.
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if self.is_news(notification.payload()) {
                            self.catch_up(&mut listener).await?;
                        }
                    }
                    Ok(None) => {
                        return Err(StoreError::Unavailable("listener connection lost".into()).into());
                    }
                    Err(error) => return Err(classify(error).into()),
                },
                _ = heartbeat.tick() => {
                    let read_started = SystemTime::now();
                    self.catch_up(&mut listener).await?;
                    self.in_sync(read_started).await?;
                }
            }
        }
    }

    /// Sends an item; `Gone` when the subscription was dropped.
    async fn send(&self, item: FeedItem) -> Result<(), Stop> {
        self.sender.send(item).await.map_err(|_| Stop::Gone)
    }

    /// Reports the proof of sync whose read began at `read_started`: it is as old as that read,
    /// however long it then waits in the channel (a relay behind a burst of events, say).
    async fn in_sync(&self, read_started: SystemTime) -> Result<(), Stop> {
        self.send(FeedItem::InSyncAt {
            last_seq: self.last_seq.unwrap_or(0),
            proved_at: read_started,
        })
        .await
    }

    /// Whether a notification may carry something not delivered yet: anything that does not
    /// name a `seq` at or before the last delivered one.
    fn is_news(&self, payload: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: i64,
        }
        match (serde_json::from_str::<Seq>(payload), self.last_seq) {
            (Ok(Seq { seq }), Some(last)) => seq > last,
            _ => true,
        }
    }

    /// Delivers everything past `last_seq`, read on `connection`. `seq` is drawn in commit
    /// order (see the migration), so "past the last delivered" misses nothing.
    async fn catch_up(&mut self, listener: &mut PgListener) -> Result<(), Stop> {
        let (timeout, protocol) = (self.config.timeout, self.config.protocol);
        let connection = bounded(timeout, listener.acquire()).await?;
        let mut after = match self.last_seq {
            Some(seq) => seq,
            None => {
                let row = bounded(timeout, Statement::new(MAX_SEQ).fetch_one(protocol, connection)).await?;
                let seq = row.try_get("seq").map_err(|e| StoreError::Query(Box::new(e)))?;
                self.last_seq = Some(seq);
                seq
            }
        };
        loop {
            let statement = Statement::new(EVENTS_SINCE).int(after).int(CATCH_UP_BATCH);
            let rows = bounded(timeout, statement.fetch_all(protocol, connection)).await?;
            for row in &rows {
                let event = event_from_row(row)?;
                after = event.seq;
                self.last_seq = Some(after);
                self.send(FeedItem::Event(event)).await?;
            }
            if (rows.len() as i64) < CATCH_UP_BATCH {
                return Ok(());
            }
        }
    }
}
