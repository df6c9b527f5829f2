use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = voxwire_tts_worker::server::Args::parse();
    voxwire_service::init_tracing();
    match voxwire_tts_worker::server::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, each cause once.
            eprintln!("tts-worker: {}", voxwire_service::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
