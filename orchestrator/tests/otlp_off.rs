//! Without an OTLP endpoint in the environment, the orchestrator's telemetry
//! set-up builds no exporter. One test in this file: it changes the
//! environment and installs the process's global subscriber.

use voxwire_orchestrator::telemetry;

#[tokio::test]
async fn nothing_is_exported_without_an_endpoint() {
    for var in telemetry::ENDPOINT_VARS {
        // Edition 2021: safe; no other test in this process reads it.
        std::env::remove_var(var);
    }
    let telemetry = telemetry::init().expect("telemetry initialises");
    assert!(!telemetry.is_exporting());
    tracing::info!("logging still works");
    telemetry.shutdown().await;
}
