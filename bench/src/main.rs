use clap::Parser;
use voxwire_bench::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::BareRelay { listen, upstream }) => {
            voxwire_bench::bare_relay::serve(&listen, &upstream).await?
        }
        None => {
            voxwire_bench::run(&cli.run).await?;
        }
    }
    Ok(())
}
