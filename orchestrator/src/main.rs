use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = voxwire_orchestrator::config::Args::parse();
    voxwire_service::init_tracing();
    voxwire_orchestrator::server::run(args).await?;
    Ok(())
}
