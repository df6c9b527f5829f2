//! Logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OpenTelemetry span export
//! over OTLP/gRPC with service name `voxwire-orchestrator`.
//!
//! The orchestrator sets up its own subscriber instead of
//! `voxwire_service::init_tracing` so the OpenTelemetry layer can sit beside
//! the same stderr logging (same `RUST_LOG` filter, default `info`). With
//! neither variable set nothing is exported and no exporter exists.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{ExporterBuildError, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// The `service.name` of every exported span.
pub const SERVICE_NAME: &str = "voxwire-orchestrator";

/// The variables that turn export on, the traces-specific one first (the
/// exporter itself reads them with the same precedence).
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long exit waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP endpoint export is configured for, if any. An empty value counts
/// as unset, as the OpenTelemetry specification asks.
pub fn configured_endpoint(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    ENDPOINT_VARS
        .iter()
        .filter_map(|var| lookup(var))
        .map(|value| value.trim().to_string())
        .find(|value| !value.is_empty())
}

/// A tracer provider exporting in batches to `endpoint` over OTLP/gRPC.
/// Must be called inside a Tokio runtime: the tonic channel lives on it.
/// Connecting is lazy, so a collector that is down costs nothing here.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, ExporterBuildError> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// What [`init`] set up; call [`Telemetry::shutdown`] before exiting so the
/// spans still buffered are exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an endpoint was configured).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered now (spans end up at the collector
    /// within the batch delay anyway; this is for tests and exit).
    pub async fn flush(&self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        // The batch processor blocks its caller until the export is done,
        // and that export needs the runtime's threads: run it off them.
        let result = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        report("flush", result);
    }

    /// Flushes and stops the exporter. Without an endpoint, nothing to do.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let result =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        report("shutdown", result);
    }
}

fn report(
    what: &str,
    result: Result<opentelemetry_sdk::error::OTelSdkResult, tokio::task::JoinError>,
) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "OpenTelemetry {what} failed"),
        Err(error) => tracing::warn!(%error, "OpenTelemetry {what} task failed"),
    }
}

/// Installs the global subscriber: stderr logs filtered by `RUST_LOG`
/// (default `info`), plus the OpenTelemetry layer when an OTLP endpoint is
/// set in the environment. Must be called inside a Tokio runtime.
///
/// A subscriber already installed (tests start several servers in one
/// process) is kept; the provider is still returned so it can be shut down.
pub fn init() -> Result<Telemetry, ExporterBuildError> {
    let endpoint = configured_endpoint(|var| std::env::var(var).ok());
    let provider = endpoint.as_deref().map(otlp_provider).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME)));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(otel)
        .try_init()
        .is_ok();
    match (&endpoint, installed) {
        (Some(endpoint), true) => {
            tracing::info!(%endpoint, service = SERVICE_NAME, "exporting spans over OTLP");
        }
        (Some(endpoint), false) => tracing::warn!(
            %endpoint,
            "a tracing subscriber was already installed: spans are not exported"
        ),
        (None, _) => {}
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        assert_eq!(configured_endpoint(env(&[])), None);
        assert_eq!(
            configured_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")])),
            None
        );
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_generic_one() {
        assert_eq!(
            configured_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")])),
            Some("http://a:4317".to_string())
        );
        assert_eq!(
            configured_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            ])),
            Some("http://b:4317".to_string())
        );
    }

    #[tokio::test]
    async fn the_exporter_builds_without_a_collector() {
        // Nothing listens there: building must not connect.
        let provider = otlp_provider("http://127.0.0.1:9").expect("exporter builds");
        let telemetry = Telemetry {
            provider: Some(provider),
        };
        assert!(telemetry.is_exporting());
        assert!(!Telemetry { provider: None }.is_exporting());
    }
}
