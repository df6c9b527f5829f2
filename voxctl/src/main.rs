use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use voxctl::transcribe::{Route, SendOptions};

/// voxwire's command line: speak, transcribe, ask a server's health.
#[derive(Debug, Parser)]
#[command(name = "voxctl", version, about)]
struct Cli {
    /// The orchestrator to talk to.
    #[arg(
        long,
        global = true,
        env = "VOXWIRE_ORCHESTRATOR",
        default_value = "127.0.0.1:50051"
    )]
    orchestrator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Speak TEXT into a WAV file.
    Say {
        text: String,
        /// Output WAV (16-bit mono).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Talk straight to this TTS worker instead of the orchestrator.
        #[arg(long, env = "VOXWIRE_TTS")]
        tts: Option<String>,
        /// Voice to use (empty: the default).
        #[arg(long, env = "VOXWIRE_MODEL", default_value = "")]
        model: String,
    },
    /// Transcribe a WAV file; prints one line per final transcript.
    Transcribe {
        input: PathBuf,
        /// Talk straight to this STT worker instead of the orchestrator.
        #[arg(long, env = "VOXWIRE_STT")]
        stt: Option<String>,
        /// Also print partial transcripts (to stderr).
        #[arg(long, env = "VOXWIRE_PARTIALS")]
        partials: bool,
        /// Send the audio at real-time pace, as a microphone would.
        #[arg(long, env = "VOXWIRE_REALTIME")]
        realtime: bool,
    },
    /// Exit 0 iff HOST:PORT reports SERVING.
    Health {
        target: String,
        /// The service to ask about ("" is the whole server).
        #[arg(long, env = "VOXWIRE_SERVICE", default_value = "")]
        service: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Say {
            text,
            output,
            tts,
            model,
        } => {
            let spoken = match &tts {
                Some(worker) => voxctl::speak::via_worker(worker, &text, &model).await,
                None => voxctl::speak::via_orchestrator(&cli.orchestrator, &text, &model).await,
            }
            .context("say failed")?;
            voxctl::wav::write_pcm16(&output, spoken.sample_rate, &spoken.pcm)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "{}: {:.2} s of audio at {} Hz in {} frames; first audio after {} ms, done after {} ms",
                output.display(),
                spoken.audio_seconds(),
                spoken.sample_rate,
                spoken.frames,
                spoken.first_audio.map_or("-".to_string(), |d| d.as_millis().to_string()),
                spoken.total.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Transcribe {
            input,
            stt,
            partials,
            realtime,
        } => {
            let (samples, rate) = voxctl::wav::read_mono16(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let (target, route) = match &stt {
                Some(worker) => (worker.as_str(), Route::Worker),
                None => (cli.orchestrator.as_str(), Route::Orchestrator),
            };
            let options = SendOptions { partials, realtime };
            voxctl::transcribe::transcribe(target, route, &samples, rate, options, |event| {
                if event.is_final {
                    println!("{}", event.text);
                } else {
                    eprintln!("… {}", event.text);
                }
            })
            .await
            .context("transcribe failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { target, service } => {
            let status = voxctl::health::check(&target, &service).await;
            match status {
                Ok(status) => {
                    println!("{}", status.as_str_name());
                    Ok(
                        if status == tonic_health::pb::health_check_response::ServingStatus::Serving
                        {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        },
                    )
                }
                Err(error) => {
                    eprintln!("{target}: {error}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
