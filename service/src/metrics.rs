//! Prometheus text exposition, small enough to own rather than pull in a
//! metrics framework: families declared up front with their help text, so a
//! scrape shows every documented family from the start (not only after its
//! first event); counters, gauges and histograms keyed by label values; and
//! [`GrpcMetrics`], which counts and times every call a gRPC server handles.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Frame;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;

/// Seconds; covers 1 ms to 10 min (a Recognize stream or a long Speak is a
/// call too).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, type, label names and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// The label names its series carry; a family without labels has one
    /// series, shown at 0 before its first event.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    pub const fn counter(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Family {
        Family {
            name,
            kind: Kind::Counter,
            labels,
            help,
        }
    }

    pub const fn gauge(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            labels,
            help,
        }
    }

    pub const fn histogram(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Family {
        Family {
            name,
            kind: Kind::Histogram,
            labels,
            help,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (bucket, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if value <= *bucket {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;
type Key = (&'static str, Labels);

#[derive(Debug, Default)]
struct Values {
    counters: BTreeMap<Key, u64>,
    gauges: BTreeMap<Key, i64>,
    histograms: BTreeMap<Key, Histogram>,
}

/// The metrics of one server.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
    values: Mutex<Values>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves values still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn own(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

impl Registry {
    pub fn new(families: &[Family]) -> Registry {
        let registry = Registry::default();
        registry.describe(families);
        registry
    }

    /// Declares families (a second declaration of a name is ignored).
    pub fn describe(&self, families: &[Family]) {
        let mut known = lock(&self.families);
        for family in families {
            if !known.iter().any(|f| f.name == family.name) {
                known.push(*family);
            }
        }
    }

    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        *lock(&self.values)
            .counters
            .entry((name, own(labels)))
            .or_default() += 1;
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: Duration) {
        lock(&self.values)
            .histograms
            .entry((name, own(labels)))
            .or_default()
            .observe(value.as_secs_f64());
    }

    /// Adds `delta` to a gauge.
    pub fn gauge_add(&self, name: &'static str, labels: &[(&'static str, &str)], delta: i64) {
        *lock(&self.values)
            .gauges
            .entry((name, own(labels)))
            .or_default() += delta;
    }

    /// Sets a gauge.
    pub fn gauge_set(&self, name: &'static str, labels: &[(&'static str, &str)], value: i64) {
        lock(&self.values).gauges.insert((name, own(labels)), value);
    }

    /// A counter's current value.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        lock(&self.values)
            .counters
            .get(&(name, own(labels)))
            .copied()
            .unwrap_or(0)
    }

    /// Sum of a counter over every label set.
    pub fn counter_total(&self, name: &'static str) -> u64 {
        lock(&self.values)
            .counters
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> i64 {
        lock(&self.values)
            .gauges
            .get(&(name, own(labels)))
            .copied()
            .unwrap_or(0)
    }

    /// Observations of a histogram over every label set.
    pub fn histogram_count(&self, name: &'static str) -> u64 {
        lock(&self.values)
            .histograms
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, h)| h.count)
            .sum()
    }

    /// Appends every declared family, in declaration order, with `# HELP`
    /// and `# TYPE`. A family without labels and without a value yet shows
    /// 0; a labelled one shows its series once a label set has a value.
    /// Values of families nobody declared follow, with `# TYPE` only.
    pub fn render(&self, out: &mut String) {
        let families = lock(&self.families).clone();
        let values = lock(&self.values);
        for family in &families {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            render_family(
                out,
                family.name,
                family.kind,
                &values,
                family.labels.is_empty(),
            );
        }
        let mut undeclared: Vec<(&'static str, Kind)> = Vec::new();
        let names = values
            .counters
            .keys()
            .map(|(n, _)| (*n, Kind::Counter))
            .chain(values.gauges.keys().map(|(n, _)| (*n, Kind::Gauge)))
            .chain(values.histograms.keys().map(|(n, _)| (*n, Kind::Histogram)));
        for (name, kind) in names {
            if !families.iter().any(|f| f.name == name) && !undeclared.contains(&(name, kind)) {
                undeclared.push((name, kind));
            }
        }
        for (name, kind) in undeclared {
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            render_family(out, name, kind, &values, false);
        }
    }
}

fn render_family(out: &mut String, name: &'static str, kind: Kind, values: &Values, zero: bool) {
    let mut any = false;
    match kind {
        Kind::Counter => {
            for ((_, labels), value) in values.counters.iter().filter(|((n, _), _)| *n == name) {
                any = true;
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        Kind::Gauge => {
            for ((_, labels), value) in values.gauges.iter().filter(|((n, _), _)| *n == name) {
                any = true;
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        Kind::Histogram => {
            for ((_, labels), hist) in values.histograms.iter().filter(|((n, _), _)| *n == name) {
                any = true;
                render_histogram(out, name, labels, hist);
            }
        }
    }
    if !any && zero {
        match kind {
            Kind::Counter | Kind::Gauge => {
                let _ = writeln!(out, "{name} 0");
            }
            Kind::Histogram => render_histogram(out, name, &Vec::new(), &Histogram::default()),
        }
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &Labels, hist: &Histogram) {
    for (i, bucket) in BUCKETS.iter().enumerate() {
        let count = hist.counts.get(i).copied().unwrap_or(0);
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

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The label a status code gets in every voxwire metric: the code's name in
/// lower snake case (`ok`, `invalid_argument`, `unavailable`), the style of
/// the other outcome values (`interrupted`).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Calls started, by `service` and `method`.
pub const GRPC_STARTED: &str = "voxwire_grpc_server_started_total";
/// Calls ended, by `service`, `method` and `code` (a call the client left
/// before its end counts as `cancelled`).
pub const GRPC_HANDLED: &str = "voxwire_grpc_server_handled_total";
/// From a call's start to the end of its response stream, by `service` and
/// `method`.
pub const GRPC_HANDLING: &str = "voxwire_grpc_server_handling_seconds";

/// The families [`GrpcMetrics`] records.
pub const GRPC_FAMILIES: &[Family] = &[
    Family::counter(GRPC_STARTED, &["service", "method"], "gRPC calls started."),
    Family::counter(
        GRPC_HANDLED,
        &["service", "method", "code"],
        "gRPC calls ended, by status code (cancelled: the client left first).",
    ),
    Family::histogram(
        GRPC_HANDLING,
        &["service", "method"],
        "Seconds from a gRPC call's start to the end of its response stream.",
    ),
];

/// Counts and times the calls of the gRPC services it wraps, into a
/// [`Registry`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    registry: Arc<Registry>,
}

impl GrpcMetrics {
    pub fn new(registry: Arc<Registry>) -> GrpcMetrics {
        registry.describe(GRPC_FAMILIES);
        GrpcMetrics { registry }
    }

    /// Wraps a generated gRPC server: same name, same routes, every call
    /// counted.
    pub fn wrap<S>(&self, inner: S) -> Instrumented<S> {
        Instrumented {
            inner,
            registry: Arc::clone(&self.registry),
        }
    }
}

/// A gRPC service whose calls are counted; see [`GrpcMetrics::wrap`].
#[derive(Debug, Clone)]
pub struct Instrumented<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S: NamedService> NamedService for Instrumented<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for Instrumented<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let call = Call {
            registry: Arc::clone(&self.registry),
            service: S::NAME,
            method,
            started: Instant::now(),
            ended: false,
        };
        call.registry.inc(
            GRPC_STARTED,
            &[("service", call.service), ("method", &call.method)],
        );
        // The service that was polled ready serves this call; a fresh clone
        // takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut call = call;
            let response = inner.call(request).await?;
            // An error answered before any message is complete in its
            // headers (trailers-only): its empty body may never be polled.
            if let Some(code) = response.headers().get("grpc-status") {
                call.end(Code::from_bytes(code.as_bytes()));
            }
            Ok(response.map(|body| Body::new(Observed { body, call })))
        })
    }
}

/// One call being counted: recorded once, when its response ends, fails
/// or is dropped.
struct Call {
    registry: Arc<Registry>,
    service: &'static str,
    method: String,
    started: Instant,
    ended: bool,
}

impl Call {
    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let labels = [("service", self.service), ("method", self.method.as_str())];
        self.registry
            .observe(GRPC_HANDLING, &labels, self.started.elapsed());
        self.registry.inc(
            GRPC_HANDLED,
            &[
                ("service", self.service),
                ("method", &self.method),
                ("code", code_label(code)),
            ],
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its end: the client left (or the connection went).
        self.end(Code::Cancelled);
    }
}

/// A response body that records its call when it ends.
struct Observed {
    body: Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()));
                    self.call.end(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.call.end(code);
            }
            // Ended with no trailers: no status was ever sent.
            Poll::Ready(None) => self.call.end(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURNS: &str = "test_turns_total";
    const SECONDS: &str = "test_seconds";
    const OPEN: &str = "test_open";
    const LABELLED: &str = "test_labelled_total";

    fn registry() -> Registry {
        Registry::new(&[
            Family::counter(TURNS, &[], "Turns."),
            Family::histogram(SECONDS, &[], "Seconds per turn."),
            Family::gauge(OPEN, &[], "Open things."),
            Family::counter(LABELLED, &["outcome"], "Turns, by outcome."),
        ])
    }

    #[test]
    fn every_declared_family_is_in_the_scrape_before_its_first_event() {
        let mut out = String::new();
        registry().render(&mut out);
        assert!(out.contains("# HELP test_turns_total Turns.\n"), "{out}");
        // A labelled family has no series before its first event.
        assert!(
            out.contains("# TYPE test_labelled_total counter\n"),
            "{out}"
        );
        assert!(!out.contains("test_labelled_total 0"), "{out}");
        assert!(
            out.contains("# TYPE test_turns_total counter\ntest_turns_total 0\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE test_seconds histogram\n"), "{out}");
        assert!(out.contains("test_seconds_count 0\n"), "{out}");
        assert!(
            out.contains("# TYPE test_open gauge\ntest_open 0\n"),
            "{out}"
        );
    }

    #[test]
    fn values_render_under_their_family_with_labels() {
        let registry = registry();
        registry.inc(TURNS, &[("outcome", "ok")]);
        registry.inc(TURNS, &[("outcome", "ok")]);
        registry.observe(SECONDS, &[("kind", "tts")], Duration::from_millis(30));
        registry.gauge_add(OPEN, &[], 3);
        registry.inc("test_undeclared_total", &[]);
        let mut out = String::new();
        registry.render(&mut out);
        assert!(
            out.contains("test_turns_total{outcome=\"ok\"} 2\n"),
            "{out}"
        );
        assert!(
            !out.contains("test_turns_total 0"),
            "no zero line beside real ones: {out}"
        );
        assert!(
            out.contains("test_seconds_bucket{kind=\"tts\",le=\"0.05\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("test_seconds_bucket{kind=\"tts\",le=\"0.025\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("test_open 3\n"), "{out}");
        assert!(
            out.contains("# TYPE test_undeclared_total counter\ntest_undeclared_total 1\n"),
            "{out}"
        );
        assert_eq!(registry.counter_total(TURNS), 2);
        assert_eq!(registry.histogram_count(SECONDS), 1);
    }

    #[test]
    fn code_labels_are_lower_snake_case() {
        assert_eq!(code_label(Code::Ok), "ok");
        assert_eq!(code_label(Code::InvalidArgument), "invalid_argument");
        assert_eq!(code_label(Code::ResourceExhausted), "resource_exhausted");
    }
}

#[cfg(test)]
mod grpc_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_stream::StreamExt;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    const HEALTH: &str = "grpc.health.v1.Health";

    /// Serves a health service wrapped in [`GrpcMetrics`] on loopback.
    async fn served() -> (Arc<Registry>, HealthClient<tonic::transport::Channel>) {
        let registry = Arc::new(Registry::default());
        let grpc = GrpcMetrics::new(Arc::clone(&registry));
        let (health, service) = crate::Health::new(&["tts.TTSService"]).await;
        health.set_serving(true).await;
        let (listener, addr) = crate::bind("127.0.0.1:0").await.expect("bind");
        let router = tonic::transport::Server::builder().add_service(grpc.wrap(service));
        tokio::spawn(async move {
            let _keep = health;
            router.serve_with_incoming(crate::incoming(listener)).await
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        (registry, HealthClient::new(channel))
    }

    fn request(service: &str) -> HealthCheckRequest {
        HealthCheckRequest {
            service: service.to_string(),
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{what}");
    }

    #[tokio::test]
    async fn every_call_is_counted_by_method_and_code_and_timed() {
        let (registry, mut client) = served().await;
        client.check(request("")).await.expect("ok");
        client
            .check(request("no.Such"))
            .await
            .expect_err("not found");
        // A stream the client leaves before it ends is cancelled.
        let mut watch = client.watch(request("")).await.expect("watch").into_inner();
        watch.next().await.expect("first").expect("status");
        drop(watch);

        let handled = |method: &'static str, code: &'static str| {
            registry.counter(
                GRPC_HANDLED,
                &[("service", HEALTH), ("method", method), ("code", code)],
            )
        };
        until("the cancelled Watch is counted", || {
            handled("Watch", "cancelled") == 1
        })
        .await;
        assert_eq!(handled("Check", "ok"), 1);
        assert_eq!(handled("Check", "not_found"), 1);
        assert_eq!(
            registry.counter(GRPC_STARTED, &[("service", HEALTH), ("method", "Check")]),
            2
        );
        assert_eq!(registry.histogram_count(GRPC_HANDLING), 3);
        let mut out = String::new();
        registry.render(&mut out);
        assert!(
            out.contains("# HELP voxwire_grpc_server_handled_total "),
            "{out}"
        );
        assert!(
            out.contains(
                "voxwire_grpc_server_handled_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"not_found\"} 1"
            ),
            "{out}"
        );
    }
}
