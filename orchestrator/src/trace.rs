//! W3C trace context: each dispatch attempt carries a `traceparent` header
//! to its worker, continuing the client's trace when it sent one (gRPC
//! metadata or, on the HTTP API, the header of the same name). With OTLP
//! export on, the orchestrator's root spans are children of the client's
//! span ([`TraceContext::adopt`]) and the header a worker gets names the
//! exported span that made the call, so one trace runs client ->
//! orchestrator -> worker.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    /// The client's span, when it sent a traceparent.
    parent_span_id: Option<String>,
    flags: String,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl TraceContext {
    /// The client's trace when its `traceparent` is well formed, else a new one.
    pub fn from_metadata(metadata: &MetadataMap) -> TraceContext {
        metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
            .unwrap_or_else(TraceContext::new_root)
    }

    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: random_hex(16),
            parent_span_id: None,
            flags: "01".to_string(),
        }
    }

    fn parse(header: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        let [version, trace_id, span_id, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = *version == "00"
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0');
        valid.then(|| TraceContext {
            trace_id: trace_id.to_ascii_lowercase(),
            parent_span_id: Some(span_id.to_ascii_lowercase()),
            flags: flags.to_ascii_lowercase(),
        })
    }

    /// Parents `span` (a root span of a turn or stream) on the client's span
    /// in exported traces. Without a client traceparent, or without OTLP
    /// export, nothing changes.
    pub fn adopt(&self, span: &tracing::Span) {
        let Some(parent) = &self.parent_span_id else {
            return;
        };
        let (Ok(trace_id), Ok(span_id)) =
            (TraceId::from_hex(&self.trace_id), SpanId::from_hex(parent))
        else {
            return;
        };
        let flags =
            u8::from_str_radix(&self.flags, 16).map_or(TraceFlags::SAMPLED, TraceFlags::new);
        let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// A `traceparent` for one outgoing call: the exported span making it
    /// (the current one) as parent when OTLP export is on; otherwise the same
    /// trace with a new span id.
    pub fn child_header(&self) -> String {
        let current = tracing::Span::current().context();
        let exported = current.span().span_context().clone();
        if exported.is_valid() {
            return format!(
                "00-{}-{}-{:02x}",
                exported.trace_id(),
                exported.span_id(),
                exported.trace_flags().to_u8()
            );
        }
        format!("00-{}-{}-{}", self.trace_id, random_hex(8), self.flags)
    }

    pub fn inject(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = MetadataValue::try_from(self.child_header()) {
            metadata.insert("traceparent", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_client_trace_with_new_spans() {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "traceparent",
            MetadataValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = TraceContext::from_metadata(&metadata);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = context.child_header();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!child.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-0000-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let mut metadata = MetadataMap::new();
            if let Ok(v) = MetadataValue::try_from(bad) {
                metadata.insert("traceparent", v);
            }
            let context = TraceContext::from_metadata(&metadata);
            assert_eq!(context.trace_id.len(), 32);
            assert_ne!(context.trace_id, "00000000000000000000000000000000");
        }
    }
}
