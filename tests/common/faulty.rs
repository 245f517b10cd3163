//! A real `PgStore` with a hand on its faults, for the races and failures of the cache tier that
//! cannot be timed from outside: hold its lookups, hold the start of its change feed, or make the
//! running feed end or panic. Everything else is the store itself.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_jwt_revocation::Revocation;

use futures_core::Stream;
use tokio::sync::watch;
use tower_jwt_revocation::{
    FeedItem, Ledger, Lookup, PgStore, RevocationRecord, RevocationStore, Snapshot, StoreError, Subscription,
    TokenFacts,
};

/// What the running change feed does at its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The stream ends, as when the feed's task dies.
    End,
    /// The stream panics inside the poll of whoever follows it.
    Panic,
}

struct Controls {
    lookups_open: watch::Sender<bool>,
    answers_open: watch::Sender<bool>,
    feed_open: watch::Sender<bool>,
    fault: Mutex<Option<Fault>>,
    lookups: AtomicUsize,
    subscriptions: AtomicUsize,
}

/// See the module documentation. Clones share the controls.
#[derive(Clone)]
pub struct Faulty {
    pub store: PgStore,
    controls: Arc<Controls>,
}

impl Faulty {
    pub fn new(store: PgStore) -> Self {
        Self {
            store,
            controls: Arc::new(Controls {
                lookups_open: watch::channel(true).0,
                answers_open: watch::channel(true).0,
                feed_open: watch::channel(true).0,
                fault: Mutex::new(None),
                lookups: AtomicUsize::new(0),
                subscriptions: AtomicUsize::new(0),
            }),
        }
    }

    /// Lookups wait (without reading the ledger) until `hold_lookups(false)`.
    pub fn hold_lookups(&self, hold: bool) {
        self.controls.lookups_open.send_replace(!hold);
    }

    /// Lookups read the ledger at once, then wait with their answer until `hold_answers(false)`:
    /// a lookup that began before a write and ends after it.
    pub fn hold_answers(&self, hold: bool) {
        self.controls.answers_open.send_replace(!hold);
    }

    /// New change feeds do not start until `hold_feed(false)`.
    pub fn hold_feed(&self, hold: bool) {
        self.controls.feed_open.send_replace(!hold);
    }

    /// Injects `fault` into the running feed (applied once, at its next poll).
    pub fn fault(&self, fault: Fault) {
        *self.controls.fault.lock().unwrap() = Some(fault);
    }

    /// How many lookups were asked for.
    pub fn lookups(&self) -> usize {
        self.controls.lookups.load(Ordering::SeqCst)
    }

    /// How many change feeds were started.
    pub fn subscriptions(&self) -> usize {
        self.controls.subscriptions.load(Ordering::SeqCst)
    }
}

/// Waits until `open` holds `true`.
async fn opened(mut open: watch::Receiver<bool>) {
    let _ = open.wait_for(|open| *open).await;
}

impl RevocationStore for Faulty {
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

impl Ledger for Faulty {
    type LookupFuture = Pin<Box<dyn Future<Output = Result<Lookup, StoreError>> + Send>>;
    type Feed = FaultyFeed;

    fn lookup(&self, facts: &TokenFacts<'_>) -> Self::LookupFuture {
        self.controls.lookups.fetch_add(1, Ordering::SeqCst);
        let open = self.controls.lookups_open.subscribe();
        let answer_open = self.controls.answers_open.subscribe();
        let store = self.store.clone();
        let (jti, sid, sub) = (
            facts.jti.map(str::to_owned),
            facts.session_id.map(str::to_owned),
            facts.subject.map(str::to_owned),
        );
        let issuer = facts.issuer.map(str::to_owned);
        let (issued_at, expires_at) = (facts.issued_at, facts.expires_at);
        Box::pin(async move {
            opened(open).await;
            let facts = TokenFacts {
                jti: jti.as_deref(),
                session_id: sid.as_deref(),
                subject: sub.as_deref(),
                issued_at,
                expires_at,
                issuer: issuer.as_deref(),
            };
            let answer = store.lookup(&facts).await;
            opened(answer_open).await;
            answer
        })
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.store.snapshot().await
    }

    fn feed(&self, after: Option<i64>) -> Result<FaultyFeed, StoreError> {
        self.controls.subscriptions.fetch_add(1, Ordering::SeqCst);
        Ok(FaultyFeed {
            gate: Some(Box::pin(opened(self.controls.feed_open.subscribe()))),
            inner: None,
            store: self.store.clone(),
            after,
            controls: Arc::clone(&self.controls),
        })
    }
}

/// The feed of a [`Faulty`] ledger: the store's own, once its gate opens, unless a fault says
/// otherwise.
pub struct FaultyFeed {
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    inner: Option<Subscription>,
    store: PgStore,
    after: Option<i64>,
    controls: Arc<Controls>,
}

impl Stream for FaultyFeed {
    type Item = FeedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        let this = &mut *self;
        if let Some(gate) = &mut this.gate {
            if gate.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.gate = None;
        }
        let fault = this.controls.fault.lock().unwrap().take();
        match fault {
            Some(Fault::End) => return Poll::Ready(None),
            Some(Fault::Panic) => panic!("injected fault: the change feed panics"),
            None => {}
        }
        if this.inner.is_none() {
            match this.store.feed(this.after) {
                Ok(subscription) => this.inner = Some(subscription),
                Err(error) => return Poll::Ready(Some(FeedItem::Disconnected(error))),
            }
        }
        match &mut this.inner {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}
