use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use voxctl::transcribe::{Route, SendOptions};
use voxctl::ClientOptions;
use voxwire_service::credentials::{resolve_token, Secret, SecretParser};
use voxwire_service::tls::ClientTlsArgs;

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
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Bearer token for the orchestrator (prefer --auth-token-file).
    #[arg(
        long,
        global = true,
        env = "VOXWIRE_AUTH_TOKEN",
        hide_env_values = true,
        value_parser = SecretParser
    )]
    auth_token: Option<Secret>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "VOXWIRE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Longest wait for a connection (TCP, TLS, HTTP/2), in milliseconds.
    #[arg(
        long,
        global = true,
        env = "VOXWIRE_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    connect_timeout_ms: u64,
    /// Longest wait for an answer (a response, the next frame; for
    /// transcribe, the next event once all audio is sent), in milliseconds.
    #[arg(
        long,
        global = true,
        env = "VOXWIRE_CALL_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    call_timeout_ms: u64,
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
    /// Write a development CA and certificates into DIR (ca.pem, server.pem,
    /// server-key.pem, client.pem, client-key.pem). Never for production.
    Certs {
        dir: PathBuf,
        /// Extra names (DNS or IP) the server certificate carries.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Exit 0 iff TARGET (HOST:PORT; default: --orchestrator) reports SERVING.
    Health {
        target: Option<String>,
        /// The service to ask about ("" is the whole server).
        #[arg(long, env = "VOXWIRE_SERVICE", default_value = "")]
        service: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            // One line, each cause once: probes and scripts log the first line.
            eprintln!("voxctl: {}", voxwire_service::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The options every command that connects takes: accepted before the
/// command or after it (`voxctl --orchestrator X say …`, as scripts write it).
const CONNECTION_OPTIONS: &[&str] = &[
    "orchestrator",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_domain",
    "auth_token",
    "auth_token_file",
    "connect_timeout_ms",
    "call_timeout_ms",
];

/// The command line, with the connection options left out of the help of
/// `certs`, which connects to nothing. (They are global so they may come
/// before the command; clap would otherwise list them under every command.)
fn command() -> clap::Command {
    let mut command = Cli::command();
    // Global options reach the subcommands only once the command is built.
    command.build();
    command.mut_subcommand("certs", |certs| {
        // In place: the built command's index of its arguments stays valid.
        certs.mut_args(|arg| {
            let connects = CONNECTION_OPTIONS.contains(&arg.get_id().as_str());
            arg.hide(connects)
        })
    })
}

fn parse() -> Result<Cli, clap::Error> {
    Cli::from_arg_matches(&command().try_get_matches()?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Certs { dir, names } => {
            for path in voxctl::certs::write_pki(dir, names)? {
                eprintln!("wrote {}", path.display());
            }
            if let Some(token) = voxctl::certs::write_token(dir)? {
                eprintln!("wrote {}", token.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Say {
            text,
            output,
            tts,
            model,
        } => {
            let options = client_options(&cli)?;
            let spoken = match tts {
                Some(worker) => voxctl::speak::via_worker_with(worker, &options, text, model).await,
                None => {
                    voxctl::speak::via_orchestrator_with(&cli.orchestrator, &options, text, model)
                        .await
                }
            }
            .context("say failed")?;
            voxctl::wav::write_pcm16(output, spoken.sample_rate, &spoken.pcm)
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
            let options = client_options(&cli)?;
            let (samples, rate) = voxctl::wav::read_mono16(input)
                .with_context(|| format!("reading {}", input.display()))?;
            let (target, route) = match stt {
                Some(worker) => (worker.as_str(), Route::Worker),
                None => (cli.orchestrator.as_str(), Route::Orchestrator),
            };
            let send = SendOptions {
                partials: *partials,
                realtime: *realtime,
            };
            let mut progress = voxctl::transcribe::Progress::new(samples.len(), rate);
            voxctl::transcribe::transcribe_with(
                target,
                &options,
                route,
                &samples,
                rate,
                send,
                |event| {
                    if event.is_final {
                        println!("{}", event.text);
                    } else {
                        eprintln!("… {}", event.text);
                    }
                    if let Some(line) = progress.on_event(event) {
                        eprintln!("{line}");
                    }
                },
            )
            .await
            .context("transcribe failed")?;
            if let Some(line) = progress.summary() {
                eprintln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { target, service } => {
            let options = client_options(&cli)?;
            let target = target.as_deref().unwrap_or(&cli.orchestrator);
            let status = voxctl::health::check_with(target, &options, service).await;
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

/// The connection options of the commands that talk to a server (TLS files
/// and the token are read only for those: `certs` needs neither).
fn client_options(cli: &Cli) -> anyhow::Result<ClientOptions> {
    Ok(ClientOptions {
        tls: cli.tls.load().context("TLS options")?,
        token: resolve_token(cli.auth_token.as_ref(), cli.auth_token_file.as_deref())
            .context("auth token")?,
        connect_timeout: std::time::Duration::from_millis(cli.connect_timeout_ms.max(1)),
        call_timeout: std::time::Duration::from_millis(cli.call_timeout_ms.max(1)),
    })
}
