//! [`MemorySessions`]: sessions of a single process, for tests and the in-memory demo.
//!
//! One mutex guards every session; rotation, reuse detection and `revoke_all` all take it, which
//! is what makes "exactly one concurrent rotation wins" and "revoke_all leaves no live token"
//! hold here. Revocations go to the wrapped [`RevocationStore`] after the session state changed,
//! so the layer enforces them.

use crate::backend::Revocation;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::{
    Issued, Session, SessionConfig, SessionError, SessionMeta, Sessions, random_session_id, random_token,
    token_hash,
};
use crate::backend::{RevocationStore, StoreError, saturating_add};
use crate::purge::Purge;

type Hash = [u8; 32];

#[derive(Debug)]
struct Entry {
    session: Session,
    current: Hash,
    previous: Option<Hash>,
    rotated_at: Option<SystemTime>,
    grace_used: bool,
    /// When the session ended, if it did.
    revoked_at: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Entry>,
    /// Current refresh-token hash → session id.
    current: HashMap<Hash, String>,
    /// Rotated-away refresh-token hashes → session id.
    used: HashMap<Hash, String>,
}

/// In-process [`Sessions`] over any [`RevocationStore`] (usually the same
/// [`MemoryStore`](crate::MemoryStore) the layer checks). Clones share one state.
#[derive(Debug, Clone)]
pub struct MemorySessions<S> {
    state: Arc<Mutex<State>>,
    store: S,
    config: SessionConfig,
}

impl<S: RevocationStore> MemorySessions<S> {
    /// Sessions revoking through `store`.
    pub fn new(store: S, config: SessionConfig) -> Self {
        Self {
            state: Arc::default(),
            store,
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section below leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sessions are held, live or ended but not yet purged.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets sessions that expired (or ended, and whose access tokens expired) more than
    /// `margin` ago, with their refresh-token hashes; returns how many. As with
    /// `PgSessions::purge_expired`, a forgotten session's tokens are
    /// then simply unknown, which is refused the same way.
    pub fn purge_expired(&self, margin: Duration) -> u64 {
        let now = SystemTime::now();
        let gone = |at: SystemTime, after: Duration| saturating_add(at, after) < now;
        let mut state = self.lock();
        let before = state.sessions.len();
        let lifetime = self.config.access_token_lifetime;
        state.sessions.retain(|_, entry| {
            !(gone(entry.session.expires_at, margin)
                || entry
                    .revoked_at
                    .is_some_and(|at| gone(at, margin.saturating_add(lifetime))))
        });
        let State {
            sessions,
            current,
            used,
        } = &mut *state;
        current.retain(|_, id| sessions.contains_key(id));
        used.retain(|_, id| sessions.contains_key(id));
        (before - sessions.len()) as u64
    }

    async fn revoke_sessions(&self, ended: &[(String, String)]) -> Result<(), SessionError> {
        let until = saturating_add(SystemTime::now(), self.config.access_token_lifetime);
        for (sid, subject) in ended {
            self.store
                .revoke(
                    &Revocation::session(sid, until)
                        .owner(subject.as_str())
                        .reason("session ended"),
                )
                .await?;
        }
        Ok(())
    }
}

impl<S: RevocationStore> Sessions for MemorySessions<S> {
    async fn start(&self, subject: &str, meta: SessionMeta) -> Result<Issued, SessionError> {
        let (id, refresh_token) = (random_session_id()?, random_token()?);
        let now = SystemTime::now();
        let session = Session {
            id: id.clone(),
            subject: subject.to_owned(),
            created_at: now,
            last_used_at: now,
            expires_at: saturating_add(now, self.config.lifetime),
            meta,
        };
        let hash = token_hash(&refresh_token);
        let mut state = self.lock();
        state.current.insert(hash, id.clone());
        let entry = Entry {
            session: session.clone(),
            current: hash,
            previous: None,
            rotated_at: None,
            grace_used: false,
            revoked_at: None,
        };
        state.sessions.insert(id, entry);
        Ok(Issued {
            session,
            refresh_token,
        })
    }

    async fn rotate(&self, refresh_token: &str) -> Result<Issued, SessionError> {
        let hash = token_hash(refresh_token);
        let next = random_token()?;
        let now = SystemTime::now();
        let reused = {
            let mut state = self.lock();
            if let Some(id) = state.current.get(&hash).cloned() {
                let State {
                    sessions,
                    current,
                    used,
                } = &mut *state;
                let Some(entry) = sessions.get_mut(&id) else {
                    return Err(SessionError::Invalid);
                };
                if entry.revoked_at.is_some() || entry.session.expires_at <= now {
                    return Err(SessionError::Invalid);
                }
                let next_hash = token_hash(&next);
                current.remove(&hash);
                current.insert(next_hash, id.clone());
                used.insert(hash, id);
                entry.previous = Some(hash);
                entry.current = next_hash;
                entry.rotated_at = Some(now);
                entry.grace_used = false;
                entry.session.last_used_at = now;
                return Ok(Issued {
                    session: entry.session.clone(),
                    refresh_token: next,
                });
            }
            let Some(id) = state.used.get(&hash).cloned() else {
                return Err(SessionError::Invalid);
            };
            let State {
                sessions, current, ..
            } = &mut *state;
            let Some(entry) = sessions.get_mut(&id) else {
                return Err(SessionError::Invalid);
            };
            let in_grace = self.config.grace.is_some_and(|grace| {
                entry.previous == Some(hash)
                    && !entry.grace_used
                    && entry
                        .rotated_at
                        .is_some_and(|at| now.duration_since(at).unwrap_or_default() <= grace)
            });
            if in_grace && entry.revoked_at.is_none() {
                entry.grace_used = true;
                return Err(SessionError::Superseded);
            }
            entry.revoked_at.get_or_insert(now);
            current.remove(&entry.current);
            (id, entry.session.subject.clone())
        };
        self.revoke_sessions(std::slice::from_ref(&reused)).await?;
        Err(SessionError::Reused { session_id: reused.0 })
    }

    async fn list(&self, subject: &str) -> Result<Vec<Session>, SessionError> {
        let now = SystemTime::now();
        let state = self.lock();
        let mut sessions: Vec<Session> = state
            .sessions
            .values()
            .filter(|e| e.session.subject == subject && e.revoked_at.is_none() && e.session.expires_at > now)
            .map(|e| e.session.clone())
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_used_at));
        Ok(sessions)
    }

    async fn revoke(&self, session_id: &str, subject: &str) -> Result<(), SessionError> {
        let ended = {
            let mut state = self.lock();
            let State {
                sessions, current, ..
            } = &mut *state;
            match sessions.get_mut(session_id) {
                Some(entry) if entry.session.subject == subject && entry.revoked_at.is_none() => {
                    entry.revoked_at = Some(SystemTime::now());
                    current.remove(&entry.current);
                    (session_id.to_owned(), subject.to_owned())
                }
                _ => return Err(SessionError::NotFound),
            }
        };
        self.revoke_sessions(&[ended]).await
    }

    async fn revoke_all(&self, subject: &str) -> Result<u64, SessionError> {
        let ended: Vec<(String, String)> = {
            let mut state = self.lock();
            let State {
                sessions, current, ..
            } = &mut *state;
            sessions
                .values_mut()
                .filter(|e| e.session.subject == subject && e.revoked_at.is_none())
                .map(|entry| {
                    entry.revoked_at = Some(SystemTime::now());
                    current.remove(&entry.current);
                    (entry.session.id.clone(), subject.to_owned())
                })
                .collect()
        };
        self.revoke_sessions(&ended).await?;
        self.store
            .revoke(&Revocation::subject(subject, SystemTime::now()).reason("revoke_all"))
            .await?;
        Ok(ended.len() as u64)
    }
}

/// Drives [`MemorySessions::purge_expired`] from [`spawn_purger`](crate::purge).
impl<S: RevocationStore> Purge for MemorySessions<S> {
    fn purge(&self, margin: Duration) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(Ok(self.purge_expired(margin)))
    }
}
