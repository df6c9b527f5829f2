use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = voxwire_stt_worker::server::Args::parse();
    voxwire_service::init_tracing();
    voxwire_stt_worker::server::run(args).await?;
    Ok(())
}
