//! The orchestrator's Prometheus metrics: its families, declared with their
//! help text in [`FAMILIES`], over the shared registry of
//! `voxwire_service::metrics` (which also carries the gRPC call counts).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use voxwire_service::metrics::{Family, GrpcMetrics, Registry};

pub const TURNS: &str = "voxwire_orchestrator_turns_total";
pub const RETRIES: &str = "voxwire_orchestrator_retries_total";
pub const HEALTH_TRANSITIONS: &str = "voxwire_orchestrator_worker_health_transitions_total";
pub const VIOLATIONS: &str = "voxwire_orchestrator_protocol_violations_total";
pub const INVALID_TRANSITIONS: &str = "voxwire_orchestrator_invalid_session_transitions_total";
pub const FIRST_AUDIO: &str = "voxwire_orchestrator_first_audio_seconds";
pub const FRAME_JITTER: &str = "voxwire_orchestrator_inter_frame_jitter_seconds";
pub const INTERRUPT: &str = "voxwire_orchestrator_interrupt_to_silence_seconds";
pub const ACTIVE_SESSIONS: &str = "voxwire_orchestrator_active_sessions";
/// Turns being dispatched or relayed right now, by kind: back to its value
/// before a fault once the fault is over, or something leaked.
pub const TURNS_IN_FLIGHT: &str = "voxwire_orchestrator_turns_in_flight";
/// Tasks alive on the runtime (tokio's own count): a task leak shows here.
pub const ALIVE_TASKS: &str = "voxwire_orchestrator_tokio_alive_tasks";

/// Every orchestrator family, in the order a scrape shows them.
pub const FAMILIES: &[Family] = &[
    Family::counter(
        TURNS,
        &["kind", "outcome"],
        "Turns ended, by kind (tts, stt) and outcome (ok, interrupted, or the status code: unavailable, invalid_argument, ...).",
    ),
    Family::counter(
        RETRIES,
        &["kind", "code"],
        "Turn attempts retried on another worker, by kind and the status code of the failed attempt.",
    ),
    Family::counter(
        HEALTH_TRANSITIONS,
        &["kind", "to"],
        "Worker endpoint state changes, by kind and the state entered (SERVING, NOT_SERVING, UNRESPONSIVE, ...).",
    ),
    Family::counter(
        VIOLATIONS,
        &["rule"],
        "Protocol rules workers broke, by rule id (docs/protocol.md).",
    ),
    Family::counter(
        INVALID_TRANSITIONS,
        &["from", "to"],
        "Session state transitions refused by the state machine, by from and to state.",
    ),
    Family::histogram(
        FIRST_AUDIO,
        &["kind"],
        "Seconds from a turn's start to its first audio frame reaching the client, by kind.",
    ),
    Family::histogram(
        FRAME_JITTER,
        &["kind"],
        "Seconds between relayed frames minus the frame duration (absolute), by kind.",
    ),
    Family::histogram(
        INTERRUPT,
        &["kind"],
        "Seconds from a barge-in or STOP to the last frame sent, by kind.",
    ),
    Family::gauge(ACTIVE_SESSIONS, &[], "Client sessions open now."),
    Family::gauge(
        TURNS_IN_FLIGHT,
        &["kind"],
        "Turns being dispatched or relayed now, by kind.",
    ),
    Family::gauge(
        ALIVE_TASKS,
        &[],
        "Tasks alive on the runtime (a leak of tasks shows here).",
    ),
];

/// The orchestrator's metrics; cheap to share.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    active_sessions: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Arc::new(Registry::new(FAMILIES));
        // Both kinds from the start, so a dashboard's series exist at 0.
        for kind in ["tts", "stt"] {
            registry.gauge_add(TURNS_IN_FLIGHT, &[("kind", kind)], 0);
        }
        Metrics {
            registry,
            active_sessions: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.registry.inc(name, labels);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        self.registry.observe(name, labels, value);
    }

    /// A counter's current value (tests and /api).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        self.registry.counter(name, labels)
    }

    /// Sum of a counter over every label set.
    pub fn counter_total(&self, name: &'static str) -> u64 {
        self.registry.counter_total(name)
    }

    pub fn histogram_count(&self, name: &'static str) -> u64 {
        self.registry.histogram_count(name)
    }

    /// Adds `delta` to a gauge.
    pub fn gauge_add(&self, name: &'static str, labels: &[(&'static str, &str)], delta: i64) {
        self.registry.gauge_add(name, labels, delta);
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> i64 {
        self.registry.gauge(name, labels)
    }

    /// Counts the gRPC calls of the services it wraps into these metrics.
    pub fn grpc(&self) -> GrpcMetrics {
        GrpcMetrics::new(Arc::clone(&self.registry))
    }

    /// Counts one turn of `kind` in flight until the guard is dropped,
    /// whatever way the turn ends (error, cancellation, client gone).
    pub fn turn_in_flight(self: &Arc<Self>, kind: &'static str) -> InFlightTurn {
        self.gauge_add(TURNS_IN_FLIGHT, &[("kind", kind)], 1);
        InFlightTurn {
            metrics: Arc::clone(self),
            kind,
        }
    }

    pub fn session_opened(&self) {
        self.active_sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self) {
        self.active_sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let sessions = self.active_sessions.load(Ordering::Relaxed);
        self.registry.gauge_set(ACTIVE_SESSIONS, &[], sessions);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
            self.registry.gauge_set(ALIVE_TASKS, &[], tasks);
        }
        let mut out = String::new();
        self.registry.render(&mut out);
        out
    }
}

/// See [`Metrics::turn_in_flight`].
pub struct InFlightTurn {
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Drop for InFlightTurn {
    fn drop(&mut self) {
        self.metrics
            .gauge_add(TURNS_IN_FLIGHT, &[("kind", self.kind)], -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.inc(VIOLATIONS, &[("rule", "TTS-FRAME-EMPTY-NONFINAL")]);
        metrics.inc(VIOLATIONS, &[("rule", "TTS-FRAME-EMPTY-NONFINAL")]);
        metrics.observe(FIRST_AUDIO, &[("kind", "tts")], Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains(
            "voxwire_orchestrator_protocol_violations_total{rule=\"TTS-FRAME-EMPTY-NONFINAL\"} 2"
        ));
        // Every family has its help line, also those with no event yet.
        for family in FAMILIES {
            assert!(text.contains(&format!("# HELP {} ", family.name)), "{text}");
        }
        assert!(text.contains("voxwire_orchestrator_turns_in_flight{kind=\"stt\"} 0"));
        assert!(text.contains(
            "voxwire_orchestrator_first_audio_seconds_bucket{kind=\"tts\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "voxwire_orchestrator_first_audio_seconds_bucket{kind=\"tts\",le=\"0.025\"} 0"
        ));
        assert_eq!(metrics.counter_total(VIOLATIONS), 2);
    }

    #[test]
    fn turn_gauge_returns_when_the_guard_drops() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let turn = metrics.turn_in_flight("tts");
        assert!(metrics
            .render()
            .contains("voxwire_orchestrator_turns_in_flight{kind=\"tts\"} 1"));
        drop(turn);
        assert_eq!(metrics.gauge(TURNS_IN_FLIGHT, &[("kind", "tts")]), 0);
    }
}
