//! The `conformance` command line (see conformance/README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::catalogue::{catalogue, Service};
use crate::glob::Glob;
use crate::regress::{self, RecordConfig};
use crate::report;
use crate::runner::{self, RunConfig, RunError};
use crate::spawn::{self, Readiness, SpawnError};

/// Protocol conformance suite for voxwire TTS and STT workers.
#[derive(Debug, Parser)]
#[command(name = "conformance", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the catalogue: id, level, rule, description.
    List {
        /// Only this service's cases.
        #[arg(long, env = "VOXWIRE_SERVICE", value_enum)]
        service: Option<Service>,
    },
    /// Check a TTS worker (tts.TTSService).
    Tts(RunArgs),
    /// Check an STT worker (stt.STTService).
    Stt(RunArgs),
    /// Record a TTS worker's exchanges and compare them with a golden file
    /// (or re-record it with --update).
    Regress(RegressArgs),
}

#[derive(Debug, Args)]
pub struct RegressArgs {
    /// The TTS worker, HOST:PORT (a deterministic engine: `tts-worker --engine tone`).
    #[arg(long, env = "VOXWIRE_TARGET")]
    pub target: String,
    /// The golden file, e.g. conformance/goldens/tts-tone.json.
    #[arg(long, env = "VOXWIRE_GOLDEN")]
    pub golden: PathBuf,
    /// Write the recording to the golden instead of comparing.
    #[arg(long, env = "VOXWIRE_REGRESS_UPDATE")]
    pub update: bool,
    /// With --update: the seed (default: the golden's, else a fixed one).
    /// Comparing always uses the golden's.
    #[arg(long, env = "VOXWIRE_SEED")]
    pub seed: Option<u64>,
    /// With --update: inputs per generated case (default: the golden's, else 4).
    #[arg(long, env = "VOXWIRE_CASES")]
    pub cases: Option<u32>,
    /// Written into the golden to say what was recorded.
    #[arg(long, default_value = "tts-worker --engine tone")]
    pub worker: String,
    /// With a command to spawn: how long it may take to report SERVING, in seconds.
    #[arg(long, env = "VOXWIRE_STARTUP_TIMEOUT", default_value_t = 120)]
    pub startup_timeout: u64,
    /// After `--`: a command that starts the worker on --target.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The worker, HOST:PORT.
    #[arg(long, env = "VOXWIRE_TARGET")]
    pub target: String,
    /// Only cases whose id matches (glob: `*`, `?`, comma-separated alternatives).
    #[arg(long, env = "VOXWIRE_RUN")]
    pub run: Option<String>,
    /// Leave out cases whose id matches.
    #[arg(long, env = "VOXWIRE_SKIP")]
    pub skip: Option<String>,
    /// Generated inputs per property case.
    #[arg(long, env = "VOXWIRE_CASES", default_value_t = 8)]
    pub cases: u32,
    /// Seed of the generated inputs (default: from the clock, printed).
    #[arg(long, env = "VOXWIRE_SEED")]
    pub seed: Option<u64>,
    /// The longest one case may take, in seconds: past it the case fails
    /// "no answer within N s" and the run goes on.
    #[arg(long, env = "VOXWIRE_CASE_TIMEOUT", default_value_t = runner::DEFAULT_CASE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub case_timeout: u64,
    /// Also write the report as JSON.
    #[arg(long, env = "VOXWIRE_JSON")]
    pub json: Option<PathBuf>,
    /// Also write the report as JUnit XML.
    #[arg(long, env = "VOXWIRE_JUNIT")]
    pub junit: Option<PathBuf>,
    /// Cases that may fail without failing the run (one id per line, `#` comments).
    #[arg(long, env = "VOXWIRE_KNOWN_FAILING")]
    pub known_failing: Option<PathBuf>,
    /// With a command to spawn: how long it may take to report SERVING, in seconds.
    #[arg(long, env = "VOXWIRE_STARTUP_TIMEOUT", default_value_t = 120)]
    pub startup_timeout: u64,
    /// TLS to the worker (--tls-ca, and --tls-cert/--tls-key for mutual TLS).
    #[command(flatten)]
    pub tls: voxwire_service::tls::ClientTlsArgs,
    /// After `--`: a command that starts the worker on --target; it is
    /// stopped after the run.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JSON report: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Regress(#[from] regress::RegressError),
    #[error(transparent)]
    Tls(#[from] voxwire_service::tls::TlsError),
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.clone(),
        source,
    })
}

fn write(path: &PathBuf, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text).map_err(|source| CliError::Io {
        path: path.clone(),
        source,
    })
}

/// The catalogue as `conformance list` prints it.
pub fn list(service: Option<Service>) -> String {
    let cases: Vec<_> = catalogue()
        .iter()
        .filter(|c| service.is_none_or(|s| c.service == s))
        .collect();
    let width = cases.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for case in cases {
        out.push_str(&format!(
            "{:<width$}  {:<6}  {:<24}  {}\n",
            case.id,
            case.level.as_str(),
            case.rule_id(),
            case.summary
        ));
    }
    out
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
}

/// Runs the command line; the exit code is 0 iff no MUST case failed.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let (service, args) = match cli.command {
        Command::List { service } => {
            print!("{}", list(service));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Tts(args) => (Service::Tts, args),
        Command::Stt(args) => (Service::Stt, args),
        Command::Regress(args) => return run_regress(args).await,
    };
    let mut config = RunConfig::new(args.target.clone(), service);
    config.tls = args.tls.load()?;
    config.run = args.run.as_deref().map(Glob::new);
    config.skip = args.skip.as_deref().map(Glob::new);
    config.cases = args.cases.max(1);
    config.seed = args.seed.unwrap_or_else(clock_seed);
    config.case_timeout = Duration::from_secs(args.case_timeout);
    if let Some(path) = &args.known_failing {
        config.known_failing = runner::parse_known_failing(&read(path)?)?;
    }
    let worker = if args.command.is_empty() {
        None
    } else {
        let deadline = Duration::from_secs(args.startup_timeout);
        let (worker, readiness) =
            spawn::spawn(&args.command, &args.target, service, deadline).await?;
        if readiness == Readiness::NoHealthService {
            eprintln!("conformance: the worker has no health service; running anyway");
        }
        config.drain = worker.drain_trigger();
        Some(worker)
    };
    eprintln!(
        "conformance: {} cases against {} (seed {}, at most {} s per case)",
        config.selected().len(),
        config.target,
        config.seed,
        args.case_timeout
    );
    let report = runner::run(&config).await;
    if let Some(worker) = worker {
        worker.stop().await;
    }
    let report = report?;
    print!("{}", report::human(&report));
    if let Some(path) = &args.json {
        write(path, &report::json(&report)?)?;
    }
    if let Some(path) = &args.junit {
        write(path, &report::junit(&report))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `conformance regress`: compare with the golden, or re-record it.
async fn run_regress(args: RegressArgs) -> Result<ExitCode, CliError> {
    // Comparing needs the golden; updating takes its seed and size if there
    // is one, so a re-record changes only what the worker changed.
    let existing = if args.update && !args.golden.exists() {
        None
    } else {
        Some(regress::read(&args.golden)?)
    };
    let (seed, cases) = match (&existing, args.update) {
        (Some(golden), false) => (golden.seed, golden.cases_per_property),
        (existing, _) => (
            args.seed
                .or(existing.as_ref().map(|g| g.seed))
                .unwrap_or(regress::DEFAULT_SEED),
            args.cases
                .or(existing.as_ref().map(|g| g.cases_per_property))
                .unwrap_or(regress::DEFAULT_CASES),
        ),
    };
    let worker = if args.command.is_empty() {
        None
    } else {
        let deadline = Duration::from_secs(args.startup_timeout);
        let (worker, _) = spawn::spawn(&args.command, &args.target, Service::Tts, deadline).await?;
        Some(worker)
    };
    let config = RecordConfig {
        target: args.target.clone(),
        seed,
        cases,
        worker: args.worker.clone(),
    };
    eprintln!(
        "conformance regress: recording {} (seed {seed}, {cases} inputs per case)",
        config.target
    );
    let recorded = regress::record(&config).await;
    if let Some(worker) = worker {
        worker.stop().await;
    }
    let recorded = recorded?;
    match existing {
        Some(golden) if !args.update => match regress::compare(&golden, &recorded) {
            Ok(()) => {
                println!("conformance regress: {} matches", args.golden.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(mismatch) => {
                println!("{}: {mismatch}", args.golden.display());
                Ok(ExitCode::FAILURE)
            }
        },
        _ => {
            regress::write(&args.golden, &recorded)?;
            println!("conformance regress: wrote {}", args.golden.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
