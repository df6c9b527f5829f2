//! The orchestrator's Prometheus metrics: counters and histograms keyed by
//! label values, rendered as text. Small enough to own rather than pull in a
//! metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds; covers 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS.len()];
        }
        for (bucket, count) in LATENCY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if value <= *bucket {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), i64>>,
    active_sessions: AtomicI64,
}

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves counts that are still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let key = (name, own(labels));
        *lock(&self.counters).entry(key).or_default() += 1;
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        let key = (name, own(labels));
        lock(&self.histograms)
            .entry(key)
            .or_default()
            .observe(value.as_secs_f64());
    }

    /// A counter's current value (tests and /api).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        lock(&self.counters)
            .get(&(name, own(labels)))
            .copied()
            .unwrap_or(0)
    }

    /// Sum of a counter over every label set.
    pub fn counter_total(&self, name: &'static str) -> u64 {
        lock(&self.counters)
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn histogram_count(&self, name: &'static str) -> u64 {
        lock(&self.histograms)
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, h)| h.count)
            .sum()
    }

    /// Adds `delta` to a gauge.
    pub fn gauge_add(&self, name: &'static str, labels: &[(&'static str, &str)], delta: i64) {
        *lock(&self.gauges).entry((name, own(labels))).or_default() += delta;
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> i64 {
        lock(&self.gauges)
            .get(&(name, own(labels)))
            .copied()
            .unwrap_or(0)
    }

    /// Counts one turn of `kind` in flight until the guard is dropped,
    /// whatever way the turn ends (error, cancellation, client gone).
    pub fn turn_in_flight(self: &std::sync::Arc<Self>, kind: &'static str) -> InFlightTurn {
        self.gauge_add(TURNS_IN_FLIGHT, &[("kind", kind)], 1);
        InFlightTurn {
            metrics: std::sync::Arc::clone(self),
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
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in lock(&self.counters).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        for ((name, labels), hist) in lock(&self.histograms).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            for (bucket, count) in LATENCY_BUCKETS.iter().zip(&hist.counts) {
                let le = bucket.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    render_labels(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                render_labels(labels, Some("+Inf")),
                hist.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                render_labels(labels, None),
                hist.sum
            );
            let _ = writeln!(
                out,
                "{name}_count{} {}",
                render_labels(labels, None),
                hist.count
            );
        }
        last = "";
        for ((name, labels), value) in lock(&self.gauges).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(out, "# TYPE {ALIVE_TASKS} gauge");
            let _ = writeln!(out, "{ALIVE_TASKS} {}", runtime.metrics().num_alive_tasks());
        }
        let _ = writeln!(out, "# TYPE {ACTIVE_SESSIONS} gauge");
        let _ = writeln!(
            out,
            "{ACTIVE_SESSIONS} {}",
            self.active_sessions.load(Ordering::Relaxed)
        );
        out
    }
}

/// See [`Metrics::turn_in_flight`].
pub struct InFlightTurn {
    metrics: std::sync::Arc<Metrics>,
    kind: &'static str,
}

impl Drop for InFlightTurn {
    fn drop(&mut self) {
        self.metrics
            .gauge_add(TURNS_IN_FLIGHT, &[("kind", self.kind)], -1);
    }
}

fn own(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
