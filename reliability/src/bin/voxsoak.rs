//! `voxsoak`: the load and soak run (`just soak`). Starts tone workers and
//! the orchestrator, runs SESSIONS concurrent sessions x MESSAGES messages,
//! prints the report and writes it to target/bench/soak.json. Exits 1 when a
//! turn failed, a frame was lost or reordered, or memory grew more than 10%.

use clap::Parser;
use voxwire_reliability::soak::{self, SoakConfig};

#[derive(Debug, Parser)]
#[command(name = "voxsoak", about)]
struct Args {
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 1_000)]
    sessions: usize,
    /// Messages per session.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Messages per session before the warm-up memory reading.
    #[arg(long, default_value_t = 10)]
    warmup_messages: usize,
    /// Tone workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/soak.json")]
    json: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SoakConfig {
        sessions: args.sessions,
        messages: args.messages,
        warmup_messages: args.warmup_messages,
        workers: args.workers,
        ..SoakConfig::full()
    };
    let report = soak::run(&config).await?;
    let json = report.json();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)?;
    let verdict = voxwire_reliability::soak::verdict(&report);
    match verdict {
        Ok(()) => {
            println!("soak passed");
            Ok(())
        }
        Err(why) => anyhow::bail!("soak failed: {why}"),
    }
}
