use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = voxwire_orchestrator::config::Args::parse();
    // Logging, plus OTLP span export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = voxwire_orchestrator::telemetry::init()?;
    let result = voxwire_orchestrator::server::run(args).await;
    // Whatever the outcome, export the spans still buffered before exiting.
    telemetry.shutdown().await;
    result?;
    Ok(())
}
