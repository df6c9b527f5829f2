//! Client sessions: the table, each session's state machine and its TTS
//! binding. Turns of one session run one at a time (the binding's lock).

use std::collections::HashMap;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session already open")]
pub struct AlreadyOpen;

pub struct Sessions {
    map: Mutex<HashMap<String, Arc<ClientSession>>>,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ClientSession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(
        &self,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
    ) -> Arc<ClientSession> {
        self.metrics.session_opened();
        let published = Arc::new(Mutex::new(None));
        Arc::new(ClientSession {
            id: id.to_string(),
            machine: Mutex::new(SessionMachine::default()),
            worker: Arc::clone(&published),
            last_used: Mutex::new(Instant::now()),
            pinned: AtomicBool::new(false),
            tts: tokio::sync::Mutex::new(TtsBinding {
                session_id: id.to_string(),
                model_id: model_id.to_string(),
                options,
                endpoint: None,
                published,
            }),
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Opens a new session; fails when the id is taken.
    pub fn create(
        &self,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
    ) -> Result<Arc<ClientSession>, AlreadyOpen> {
        let mut map = self.lock();
        if map.contains_key(id) {
            return Err(AlreadyOpen);
        }
        let session = self.build(id, model_id, options);
        map.insert(id.to_string(), Arc::clone(&session));
        Ok(session)
    }

    /// The session named `id`, opened when unknown.
    pub fn get_or_create(
        &self,
        id: &str,
        model_id: &str,
        options: HashMap<String, String>,
    ) -> Arc<ClientSession> {
        let mut map = self.lock();
        if let Some(session) = map.get(id) {
            return Arc::clone(session);
        }
        let session = self.build(id, model_id, options);
        map.insert(id.to_string(), Arc::clone(&session));
        session
    }

    pub fn get(&self, id: &str) -> Option<Arc<ClientSession>> {
        self.lock().get(id).cloned()
    }

    /// Removes the session and moves it to TERMINATED.
    pub fn remove(&self, id: &str) -> Option<Arc<ClientSession>> {
        let session = self.lock().remove(id)?;
        self.metrics.session_closed();
        session.transition(SessionState::Terminated);
        Some(session)
    }

    /// Removes sessions unused for `idle` (not in a turn, not in a Converse
    /// stream): clients that vanish without EndSession must not hold worker
    /// sessions forever. Returns them so their worker sessions get closed.
    pub fn reap_idle(&self, idle: Duration) -> Vec<Arc<ClientSession>> {
        let stale: Vec<String> = self
            .lock()
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
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
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
        let sessions = Sessions::new(Arc::clone(&metrics));
        let session = sessions.create("a", "", HashMap::new()).expect("new");
        assert!(sessions.create("a", "", HashMap::new()).is_err());
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
        let sessions = Sessions::new(Arc::new(Metrics::default()));
        let idle = sessions.create("idle", "", HashMap::new()).expect("new");
        let busy = sessions.create("busy", "", HashMap::new()).expect("new");
        let pinned = sessions.create("pinned", "", HashMap::new()).expect("new");
        pinned.pin();
        let _turn = busy.tts.lock().await;
        assert!(sessions.reap_idle(Duration::from_secs(3600)).is_empty());
        let reaped = sessions.reap_idle(Duration::ZERO);
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].id, "idle");
        assert_eq!(idle.state(), SessionState::Terminated);
        assert_eq!(sessions.len(), 2);
    }
}
