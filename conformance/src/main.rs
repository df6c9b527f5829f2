use std::process::ExitCode;

use clap::Parser;

/// Exit 0: no MUST case failed; 1: one did; 2: the run could not be made
/// (bad options, target unreachable, nothing selected).
fn main() -> ExitCode {
    let cli = voxwire_conformance::cli::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // One line, each cause once: CI logs show the first line.
            eprintln!(
                "conformance: {}",
                voxwire_service::error_chain(error.as_ref())
            );
            ExitCode::from(2)
        }
    }
}

fn run(cli: voxwire_conformance::cli::Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(voxwire_conformance::cli::run(cli))?)
}
