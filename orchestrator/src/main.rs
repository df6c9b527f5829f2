use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = voxwire_orchestrator::config::Args::parse();
    // Logging, plus OTLP span export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = match voxwire_orchestrator::telemetry::init() {
        Ok(telemetry) => telemetry,
        Err(error) => return fail(&error),
    };
    let result = voxwire_orchestrator::server::run(args).await;
    // Whatever the outcome, export the spans still buffered before exiting.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// One line, each cause once.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("orchestrator: {}", voxwire_service::error_chain(error));
    ExitCode::FAILURE
}
