//! Without an OTLP endpoint in the environment, the orchestrator's telemetry
//! set-up builds no exporter. It shares its process with the other tests of
//! this binary: none of them sets or reads the endpoint variables, and which
//! global subscriber wins (this one's or the fixtures') changes nothing here.

use voxwire_orchestrator::telemetry;

#[tokio::test]
async fn nothing_is_exported_without_an_endpoint() {
    let _gate = crate::GATE.enter(module_path!());
    for var in telemetry::ENDPOINT_VARS {
        // Edition 2021: safe. Other tests run in this process meanwhile, so
        // the environment is changed only when the variable is set (never,
        // in the test runs of this repository).
        if std::env::var_os(var).is_some() {
            std::env::remove_var(var);
        }
    }
    let telemetry = telemetry::init().expect("telemetry initialises");
    assert!(!telemetry.is_exporting());
    tracing::info!("logging still works");
    telemetry.shutdown().await;
}
