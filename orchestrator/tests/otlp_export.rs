//! OTLP span export: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! in-test collector (opentelemetry-proto's TraceService), a Speak through
//! the orchestrator reaches it as `session`, `turn` and `dispatch` spans of
//! service `voxwire-orchestrator`. One test in this file: it sets the
//! variable and installs the process's global subscriber.

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
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use voxwire_orchestrator::telemetry;
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
    assert_eq!(turns.len(), 1, "one turn span: {spans:?}");
    assert!(!dispatches.is_empty(), "a dispatch span: {spans:?}");
    assert!(
        spans
            .iter()
            .all(|s| s.service.as_deref() == Some(telemetry::SERVICE_NAME)),
        "service.name {}: {spans:?}",
        telemetry::SERVICE_NAME
    );
    // The turn is a child of its session, and the dispatch of its turn.
    let turn = &turns[0];
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
}
