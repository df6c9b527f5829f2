//! Client sessions: the table, each session's state machine and its TTS
//! binding. Turns of one session run one at a time (the binding's lock).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voxwire_proto::voxwire::v1::SessionState;

use crate::metrics::{self, Metrics};
use crate::state::SessionMachine;
use crate::tts_dispatch::TtsBinding;

pub struct ClientSession {
    pub id: String,
    machine: Mutex<SessionMachine>,
    /// Held for the whole of a turn, so a session's turns never overlap.
    pub tts: tokio::sync::Mutex<TtsBinding>,
    /// The worker the session is open on, readable during a turn.
    worker: Arc<Mutex<Option<String>>>,
    last_used: Mutex<Instant>,
    /// Held by a live Converse stream: never reaped for idleness.
    pinned: AtomicBool,
    /// Opened by a Speak, not by StartSession or Converse: nobody will end
    /// it, so its worker session ends with each turn.
    pub implicit: bool,
    /// Opened by a Speak without a session id: nobody can name it again, so
    /// it is forgotten after its turn.
    pub one_shot: bool,
    /// The client address it counts against (--max-open-sessions-per-client).
    owner: Option<IpAddr>,
    metrics: Arc<Metrics>,
}

impl ClientSession {
    /// Marks the session used now (it is reaped after --session-idle-seconds unused).
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn pin(&self) {
        self.pinned.store(true, Ordering::Release);
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    pub fn worker(&self) -> Option<String> {
        self.worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self) -> SessionState {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state()
    }

    /// Moves to `to`; returns `(from, to)` when it moved. An invalid
    /// transition is logged and counted and leaves the state as it was.
    pub fn transition(&self, to: SessionState) -> Option<(SessionState, SessionState)> {
        let result = self
            .machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transition(to);
        match result {
            Ok(from) => Some((from, to)),
            Err(invalid) => {
                tracing::warn!(session = %self.id, %invalid, "invalid session transition");
                self.metrics.inc(
                    metrics::INVALID_TRANSITIONS,
                    &[
                        ("from", invalid.from.as_str_name()),
                        ("to", invalid.to.as_str_name()),
                    ],
                );
                None
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("session already open")]
    AlreadyOpen,
    #[error(
        "this client has {open} sessions open, the limit (--max-open-sessions-per-client) is \
         {limit}: end sessions with EndSession"
    )]
    TooMany { open: usize, limit: usize },
}

impl CreateError {
    /// The status of a refusal other than a duplicate id.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            CreateError::AlreadyOpen => tonic::Status::already_exists(self.to_string()),
            CreateError::TooMany { .. } => tonic::Status::resource_exhausted(self.to_string()),
        }
    }
}

/// Who opens a session, and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opener {
    /// The client's address, counted against the per-client limit.
    pub owner: Option<IpAddr>,
    /// Opened by a Speak (see [`ClientSession::implicit`]).
    pub implicit: bool,
    /// Opened by a Speak without an id (see [`ClientSession::one_shot`]).
    pub one_shot: bool,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<ClientSession>>,
    per_owner: HashMap<IpAddr, usize>,
}

impl Table {
    fn take(&mut self, id: &str) -> Option<Arc<ClientSession>> {
        let session = self.by_id.remove(id)?;
        if let Some(owner) = session.owner {
            if let Some(count) = self.per_owner.get_mut(&owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_owner.remove(&owner);
                }
            }
        }
        Some(session)
    }
}

pub struct Sessions {
    table: Mutex<Table>,
    /// 0: no limit.
    per_client: usize,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(metrics: Arc<Metrics>, max_open_per_client: usize) -> Sessions {
        Sessions {
            table: Mutex::new(Table::default()),
            per_client: max_open_per_client,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds and inserts a session after the per-client check (the caller
    /// holds the table and checked the id is free).
    fn insert(
        &self,
        table: &mut Table,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
        opener: Opener,
    ) -> Result<Arc<ClientSession>, CreateError> {
        if let (Some(owner), true) = (opener.owner, self.per_client > 0) {
            let open = table.per_owner.get(&owner).copied().unwrap_or(0);
            if open >= self.per_client {
                tracing::warn!(peer = %owner, limit = self.per_client, "client over its open-session limit");
                return Err(CreateError::TooMany {
                    open,
                    limit: self.per_client,
                });
            }
            *table.per_owner.entry(owner).or_insert(0) += 1;
        }
        self.metrics.session_opened();
        let published = Arc::new(Mutex::new(None));
        let session = Arc::new(ClientSession {
            id: id.to_string(),
            machine: Mutex::new(SessionMachine::default()),
            worker: Arc::clone(&published),
            last_used: Mutex::new(Instant::now()),
            pinned: AtomicBool::new(false),
            implicit: opener.implicit,
            one_shot: opener.one_shot,
            owner: opener.owner,
            tts: tokio::sync::Mutex::new(TtsBinding {
                session_id: id.to_string(),
                model_id: model_id.to_string(),
                options,
                endpoint: None,
                preferred: None,
                published,
            }),
            metrics: Arc::clone(&self.metrics),
        });
        table.by_id.insert(id.to_string(), Arc::clone(&session));
        Ok(session)
    }

    /// Opens a new session; fails when the id is taken or the client is at
    /// its limit.
    pub fn create(
        &self,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
        opener: Opener,
    ) -> Result<Arc<ClientSession>, CreateError> {
        let mut table = self.lock();
        if table.by_id.contains_key(id) {
            return Err(CreateError::AlreadyOpen);
        }
        self.insert(&mut table, id, model_id, options, opener)
    }

    /// The session named `id`, opened (by `opener`) when unknown.
    pub fn get_or_create(
        &self,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
        opener: Opener,
    ) -> Result<Arc<ClientSession>, CreateError> {
        let mut table = self.lock();
        if let Some(session) = table.by_id.get(id) {
            return Ok(Arc::clone(session));
        }
        self.insert(&mut table, id, model_id, options, opener)
    }

    pub fn get(&self, id: &str) -> Option<Arc<ClientSession>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Removes the session and moves it to TERMINATED.
    pub fn remove(&self, id: &str) -> Option<Arc<ClientSession>> {
        let session = self.lock().take(id)?;
        self.closed(&session);
        Some(session)
    }

    fn closed(&self, session: &ClientSession) {
        self.metrics.session_closed();
        session.transition(SessionState::Terminated);
    }

    /// True when nothing but the table and the caller holds `session`: no
    /// other turn of it is waiting. Handles are only ever cloned out of the
    /// table under its lock, so the count cannot grow behind this check's back.
    pub fn is_sole_user(&self, session: &Arc<ClientSession>) -> bool {
        let table = self.lock();
        table
            .by_id
            .get(&session.id)
            .is_some_and(|entry| Arc::ptr_eq(entry, session))
            && Arc::strong_count(session) == 2
    }

    /// Removes `session` when nothing else holds it (see [`Sessions::is_sole_user`]).
    pub fn remove_if_unused(&self, session: &Arc<ClientSession>) -> bool {
        let removed = {
            let mut table = self.lock();
            let unused = table
                .by_id
                .get(&session.id)
                .is_some_and(|entry| Arc::ptr_eq(entry, session))
                && Arc::strong_count(session) == 2;
            unused && table.take(&session.id).is_some()
        };
        if removed {
            self.closed(session);
        }
        removed
    }

    /// Sessions open now from `owner` (for tests).
    pub fn open_from(&self, owner: IpAddr) -> usize {
        self.lock().per_owner.get(&owner).copied().unwrap_or(0)
    }

    /// Removes sessions unused for `idle` (not in a turn, not in a Converse
    /// stream): clients that vanish without EndSession must not hold worker
    /// sessions forever. Returns them so their worker sessions get closed.
    pub fn reap_idle(&self, idle: Duration) -> Vec<Arc<ClientSession>> {
        let stale: Vec<String> = self
            .lock()
            .by_id
            .values()
            .filter(|s| {
                !s.pinned.load(Ordering::Acquire)
                    && s.idle_for() >= idle
                    && s.tts.try_lock().is_ok()
            })
            .map(|s| s.id.clone())
            .collect();
        stale.iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().by_id.is_empty()
    }
}

/// A fresh session id for clients that gave none.
pub fn new_session_id() -> String {
    format!("vx-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_transitions_are_counted_not_fatal() {
        let metrics = Arc::new(Metrics::default());
        let sessions = Sessions::new(Arc::clone(&metrics), 0);
        let session = sessions
            .create("a", "", HashMap::new(), Opener::default())
            .expect("new");
        assert!(sessions
            .create("a", "", HashMap::new(), Opener::default())
            .is_err());
        assert!(session.transition(SessionState::BargedIn).is_none());
        assert_eq!(metrics.counter_total(metrics::INVALID_TRANSITIONS), 1);
        assert_eq!(
            session.transition(SessionState::Speaking),
            Some((SessionState::Idle, SessionState::Speaking))
        );
        sessions.remove("a");
        assert_eq!(session.state(), SessionState::Terminated);
        assert!(sessions.is_empty());
    }

    #[tokio::test]
    async fn reaps_idle_sessions_but_not_busy_or_pinned_ones() {
        let sessions = Sessions::new(Arc::new(Metrics::default()), 0);
        let open = |id| {
            sessions
                .create(id, "", HashMap::new(), Opener::default())
                .expect("new")
        };
        let idle = open("idle");
        let busy = open("busy");
        let pinned = open("pinned");
        pinned.pin();
        let _turn = busy.tts.lock().await;
        assert!(sessions.reap_idle(Duration::from_secs(3600)).is_empty());
        let reaped = sessions.reap_idle(Duration::ZERO);
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].id, "idle");
        assert_eq!(idle.state(), SessionState::Terminated);
        assert_eq!(sessions.len(), 2);
    }

    #[test]
    fn open_sessions_are_limited_per_client_and_released_on_removal() {
        let sessions = Sessions::new(Arc::new(Metrics::default()), 2);
        let client: IpAddr = "10.0.0.7".parse().expect("ip");
        let opener = Opener {
            owner: Some(client),
            ..Opener::default()
        };
        sessions.create("a", "", HashMap::new(), opener).expect("a");
        sessions.create("b", "", HashMap::new(), opener).expect("b");
        let Err(refused) = sessions.create("c", "", HashMap::new(), opener) else {
            panic!("a third session past the limit");
        };
        assert_eq!(refused, CreateError::TooMany { open: 2, limit: 2 });
        assert_eq!(refused.to_status().code(), tonic::Code::ResourceExhausted);
        // An existing session is still reachable at the limit.
        assert!(sessions
            .get_or_create("a", "", HashMap::new(), opener)
            .is_ok());
        sessions.remove("a");
        assert_eq!(sessions.open_from(client), 1);
        sessions
            .create("c", "", HashMap::new(), opener)
            .expect("room again");
    }

    #[test]
    fn a_session_held_by_another_turn_is_not_removed() {
        let sessions = Sessions::new(Arc::new(Metrics::default()), 0);
        let session = sessions
            .create("s", "", HashMap::new(), Opener::default())
            .expect("new");
        let waiting = sessions.get("s").expect("a second turn");
        assert!(!sessions.is_sole_user(&session));
        assert!(!sessions.remove_if_unused(&session));
        drop(waiting);
        assert!(sessions.is_sole_user(&session));
        assert!(sessions.remove_if_unused(&session));
        assert!(sessions.is_empty());
    }
}
