//! OTLP span export: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! in-test collector (opentelemetry-proto's TraceService), a Speak through
//! the orchestrator reaches it as `session`, `turn` and `dispatch` spans of
//! service `voxwire-orchestrator`; and a client's `traceparent` (gRPC
//! metadata, and the HTTP header on `/v1/audio/speech`) is the parent of the
//! orchestrator's spans, whose ids reach the worker in its calls' own
//! `traceparent`: one trace from client to worker. One test in this file: it
//! sets the variable and installs the process's global subscriber.

// The fixtures of the main test binary (tests/it).
#[path = "it/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use voxwire_orchestrator::telemetry;
use voxwire_proto::tts::tts_service_server::TtsServiceServer;
use voxwire_proto::voxwire::v1::SpeakRequest;
use voxwire_tts_worker::server::Args as WorkerArgs;

#[derive(Debug, Clone, PartialEq)]
struct ReceivedSpan {
    service: Option<String>,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans.resource.and_then(|resource| {
                resource
                    .attributes
                    .into_iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value?.value)
                    .and_then(|value| match value {
                        Value::StringValue(s) => Some(s),
                        _ => None,
                    })
            });
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        self.spans.lock().expect("lock").extend(received);
        self.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn collector() -> (Collector, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (collector, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speak_turn_is_exported_over_otlp() {
    let (collector, endpoint) = collector().await;
    // Edition 2021: set_var is safe; this file holds this one test, so no
    // other thread of the process reads the environment meanwhile.
    std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let telemetry = telemetry::init().expect("telemetry initialises");
    assert!(telemetry.is_exporting());

    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    speak_ok(&mut orch.voxwire(), "otlp", "Hello there. How are you?").await;

    // A worker that records the traceparent of every call it gets.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = Arc::clone(&seen);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for service in ["", "tts.TTSService"] {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .add_service(TtsServiceServer::with_interceptor(
                FakeTts::new(Mode::Valid),
                move |request: Request<()>| {
                    if let Some(header) = request.metadata().get("traceparent") {
                        let header = header.to_str().unwrap_or_default().to_string();
                        recorder.lock().expect("lock").push(header);
                    }
                    Ok(request)
                },
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let traced = orchestrator(tts_args(&[fake_addr.to_string()])).await;
    traced.wait_ready().await;
    let mut speak = Request::new(SpeakRequest {
        text: "Traced.".into(),
        ..Default::default()
    });
    speak
        .metadata_mut()
        .insert("traceparent", MetadataValue::from_static(GRPC_PARENT));
    let mut frames = traced
        .voxwire()
        .speak(speak)
        .await
        .expect("speak")
        .into_inner();
    while frames.message().await.expect("frames").is_some() {}
    let (status, body) = http_post_json(
        traced.running.http_addr,
        "/v1/audio/speech",
        &[("traceparent", HTTP_PARENT)],
        r#"{"model":"tts-1","voice":"alloy","input":"Traced over HTTP."}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Flush at exit sends what is still buffered; the spans must be there
    // once shutdown returns, without waiting for the batch delay.
    let arrived = collector.arrived.notified();
    telemetry.shutdown().await;
    if collector.spans().is_empty() {
        // The export may still be in the collector's handler.
        let _ = tokio::time::timeout(Duration::from_secs(5), arrived).await;
    }
    let spans = collector.spans();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (sessions, turns, dispatches) = (named("session"), named("turn"), named("dispatch"));
    assert!(!sessions.is_empty(), "a session span: {spans:?}");
    assert_eq!(turns.len(), 3, "a turn span per call: {spans:?}");
    assert!(!dispatches.is_empty(), "a dispatch span: {spans:?}");
    assert!(
        spans
            .iter()
            .all(|s| s.service.as_deref() == Some(telemetry::SERVICE_NAME)),
        "service.name {}: {spans:?}",
        telemetry::SERVICE_NAME
    );
    // The turn is a child of its session, and the dispatch of its turn.
    let client_traces = [GRPC_PARENT, HTTP_PARENT].map(trace_id_of);
    let turn = turns
        .iter()
        .find(|t| !client_traces.iter().any(|id| id[..] == t.trace_id[..]))
        .expect("the first turn has a trace of its own");
    assert!(
        sessions
            .iter()
            .any(|s| s.span_id == turn.parent_span_id && s.trace_id == turn.trace_id),
        "turn under its session: {spans:?}"
    );
    assert!(
        dispatches
            .iter()
            .any(|d| d.parent_span_id == turn.span_id && d.trace_id == turn.trace_id),
        "dispatch under its turn: {spans:?}"
    );

    // The client's trace continues: its span is the parent of the
    // orchestrator's root span, and each call to the worker names an
    // exported dispatch span of that trace as its parent.
    let seen = seen.lock().expect("lock").clone();
    for parent in [GRPC_PARENT, HTTP_PARENT] {
        let trace = trace_id_of(parent);
        let in_trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id[..] == trace[..])
            .collect();
        let client_span = span_id_of(parent);
        assert!(
            in_trace
                .iter()
                .any(|s| s.name == "session" && s.parent_span_id[..] == client_span[..]),
            "a session span under the client's span {parent}: {spans:?}"
        );
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let calls: Vec<&String> = seen.iter().filter(|h| h.contains(&hex(&trace))).collect();
        assert!(!calls.is_empty(), "the worker saw trace {parent}: {seen:?}");
        for header in calls {
            let parent_of_call = header.split('-').nth(2).unwrap_or_default();
            assert!(
                in_trace
                    .iter()
                    .any(|s| s.name == "dispatch" && hex(&s.span_id) == parent_of_call),
                "the worker's call {header} names an exported dispatch span: {spans:?}"
            );
        }
    }
}

const GRPC_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const HTTP_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn hex_bytes<const N: usize>(hex: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn trace_id_of(traceparent: &str) -> [u8; 16] {
    hex_bytes(traceparent.split('-').nth(1).expect("trace id"))
}

fn span_id_of(traceparent: &str) -> [u8; 8] {
    hex_bytes(traceparent.split('-').nth(2).expect("span id"))
}

/// A minimal HTTP/1.0 POST of a JSON body: status code and body.
async fn http_post_json(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    (status, response)
}
