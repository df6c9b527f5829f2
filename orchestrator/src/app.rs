//! The orchestrator's shared state: pools and dispatchers, sessions, metrics,
//! the registry and drain; and readiness computed from the pools.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;
use voxwire_proto::tts::AudioFrame;
use voxwire_proto::voxwire::v1::SessionState;
use voxwire_service::{Drain, InFlight};

use crate::config::Settings;
use crate::discovery::Registry;
use crate::endpoint::Kind;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::sessions::{ClientSession, Sessions};
use crate::stt_dispatch::SttDispatcher;
use crate::trace::TraceContext;
use crate::tts_dispatch::{TextFeed, TtsDispatcher, TurnStats};

pub struct Orchestrator {
    pub settings: Settings,
    pub tts: Arc<TtsDispatcher>,
    pub stt: Arc<SttDispatcher>,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub drain: Drain,
}

impl Orchestrator {
    pub fn new(settings: Settings, drain: Drain) -> Arc<Orchestrator> {
        let metrics = Arc::new(Metrics::default());
        let tts_pool = Pool::new(Kind::Tts, settings.endpoint.clone(), Arc::clone(&metrics));
        let stt_pool = Pool::new(Kind::Stt, settings.endpoint.clone(), Arc::clone(&metrics));
        let registry = Registry::new(
            Arc::clone(&tts_pool),
            Arc::clone(&stt_pool),
            settings.registry.max_lease,
            settings.registry.policy.clone(),
        );
        Arc::new(Orchestrator {
            tts: Arc::new(TtsDispatcher::new(
                tts_pool,
                settings.dispatch.clone(),
                Arc::clone(&metrics),
            )),
            stt: Arc::new(SttDispatcher::new(
                stt_pool,
                settings.dispatch.clone(),
                Arc::clone(&metrics),
            )),
            sessions: Sessions::new(
                Arc::clone(&metrics),
                settings.security.max_open_sessions_per_client,
            ),
            metrics,
            registry,
            drain,
            settings,
        })
    }

    pub fn pools(&self) -> [&Arc<Pool>; 2] {
        [self.tts.pool(), self.stt.pool()]
    }

    /// Ready when every kind in use (targets configured, or workers
    /// registered) has at least one SERVING worker, and some kind is in use.
    pub fn is_ready(&self) -> bool {
        let in_use = |pool: &Arc<Pool>, targets: bool| targets || !pool.is_empty();
        let kinds = [
            (self.tts.pool(), !self.settings.tts.is_empty()),
            (self.stt.pool(), !self.settings.stt.is_empty()),
        ];
        let used: Vec<_> = kinds.iter().filter(|(p, t)| in_use(p, *t)).collect();
        !used.is_empty() && used.iter().all(|(pool, _)| pool.any_serving())
    }

    /// Admits one unit of work, refusing with UNAVAILABLE while draining.
    pub fn admit(&self) -> Result<InFlight, Status> {
        Ok(self.drain.admit()?)
    }

    /// One TTS turn of a session outside Converse: SPEAKING for its duration.
    pub async fn tts_turn(
        &self,
        session: &ClientSession,
        feed: &mut TextFeed<'_>,
        trace: &TraceContext,
        out: &mpsc::Sender<AudioFrame>,
    ) -> Result<TurnStats, Status> {
        let mut binding = session.tts.lock().await;
        session.touch();
        session.transition(SessionState::Speaking);
        let session_span = tracing::info_span!("session", session = %session.id);
        trace.adopt(&session_span);
        let span = tracing::info_span!(parent: &session_span, "turn", trace_id = %trace.trace_id);
        let result = self
            .tts
            .speak_feed(&mut binding, feed, trace, out)
            .instrument(span)
            .await;
        session.transition(SessionState::Listening);
        session.touch();
        result
    }

    /// After a turn of a session a Speak opened: ends its worker session
    /// (the next turn prefers the same worker), and forgets a session whose
    /// id the orchestrator made up. Left to the last of several waiting turns.
    pub async fn end_implicit_session(&self, session: &Arc<ClientSession>) {
        let mut binding = session.tts.lock().await;
        if !self.sessions.is_sole_user(session) {
            return;
        }
        self.tts.release_session(&mut binding).await;
        if session.one_shot {
            self.sessions.remove_if_unused(session);
        }
    }

    /// Closes sessions left unused, and their sessions on the workers.
    pub async fn reap_loop(self: Arc<Self>) {
        let idle = self.settings.session_idle;
        let mut tick = tokio::time::interval((idle / 4).max(std::time::Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for session in self.sessions.reap_idle(idle) {
                tracing::info!(session = %session.id, "closing idle session");
                let mut binding = session.tts.lock().await;
                self.tts.close_session(&mut binding).await;
            }
        }
    }
}
