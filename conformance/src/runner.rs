//! Runs the selected cases against one target and gathers a [`Report`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalogue::{catalogue, CaseDef, CaseLevel, Service};
use crate::client::{self, Ctx};
use crate::glob::Glob;
use crate::outcome::{Failure, Outcome};

pub use crate::target::DrainTrigger;

/// The default of `--case-timeout`: a case that has not finished by then
/// fails "no answer within N s", and the run goes on. Long enough for the
/// slowest honest case on a real voice (the Piper worker on a loaded 2-core
/// machine: up to 57 s for a frame case's 8 inputs, one long text alone
/// about 25 s), bounded for a worker that never answers (the TTS suite then
/// takes about 23 x this; `--case-timeout` shortens it).
pub const DEFAULT_CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// The share of the case timeout a property spends drawing new inputs; the
/// input under way when it runs out has the rest to finish.
const INPUT_SHARE: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bad target {target:?}: {source}")]
    Target {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("known-failing list, line {line}: no case {id:?} (conformance list shows the ids)")]
    UnknownCase { line: usize, id: String },
    /// A selection of nothing would report CONFORMS having checked nothing.
    #[error(
        "no {} case is selected by {selection} (`conformance list {}` shows the ids)", service.as_str(), service.as_str()
    )]
    NothingSelected { service: Service, selection: String },
    /// Every case would fail the same way; one line says why instead.
    #[error("cannot reach {target}: {reason}; no case was run")]
    Unreachable { target: String, reason: String },
}

/// What to run, against what.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// HOST:PORT (or a full http:// URI).
    pub target: String,
    pub service: Service,
    pub run: Option<Glob>,
    pub skip: Option<Glob>,
    /// Inputs per property case.
    pub cases: u32,
    pub seed: u64,
    /// Case ids that may fail without failing the run.
    pub known_failing: BTreeSet<String>,
    /// Drains the target; the drain cases run last and need it.
    pub drain: Option<DrainTrigger>,
    /// TLS to the target (`None`: plaintext).
    pub tls: Option<voxwire_service::tls::ClientTls>,
    /// The longest one case may take (`--case-timeout`).
    pub case_timeout: Duration,
}

impl RunConfig {
    pub fn new(target: impl Into<String>, service: Service) -> RunConfig {
        RunConfig {
            target: target.into(),
            service,
            run: None,
            skip: None,
            cases: 8,
            seed: 0,
            known_failing: BTreeSet::new(),
            drain: None,
            tls: None,
            case_timeout: DEFAULT_CASE_TIMEOUT,
        }
    }

    /// The cases of this service the globs select, in catalogue order.
    pub fn selected(&self) -> Vec<&'static CaseDef> {
        catalogue()
            .iter()
            .filter(|c| c.service == self.service)
            .filter(|c| self.run.as_ref().is_none_or(|g| g.is_match(c.id)))
            .filter(|c| !self.skip.as_ref().is_some_and(|g| g.is_match(c.id)))
            .collect()
    }

    /// The `--run` / `--skip` options as given, for messages.
    pub fn selection(&self) -> String {
        match (&self.run, &self.skip) {
            (None, None) => "the catalogue".to_string(),
            (Some(run), None) => format!("--run {}", run.as_str()),
            (None, Some(skip)) => format!("--skip {}", skip.as_str()),
            (Some(run), Some(skip)) => format!("--run {} --skip {}", run.as_str(), skip.as_str()),
        }
    }

    /// The command that replays one case on one input.
    pub fn replay(&self, case: &str, seed: u64) -> String {
        format!(
            "conformance {} --target {} --run {case} --seed {seed} --cases 1",
            self.service.as_str(),
            self.target
        )
    }
}

/// Reads a known-failing list: one case id per line, `#` starts a comment.
/// An id the catalogue does not have is an error, so a typo cannot hide a
/// failure.
pub fn parse_known_failing(text: &str) -> Result<BTreeSet<String>, RunError> {
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        if crate::catalogue::find(id).is_none() {
            return Err(RunError::UnknownCase {
                line: i + 1,
                id: id.to_string(),
            });
        }
        ids.insert(id.to_string());
    }
    Ok(ids)
}

/// How a case's outcome counts, the known-failing list applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    Pass,
    Skip,
    /// Failed, and counts against the run when the case is MUST.
    Fail,
    /// Failed, as the known-failing list says it does.
    KnownFail,
    /// Listed as known failing, yet passed: the list is stale, the run fails.
    UnexpectedPass,
}

impl Standing {
    pub const fn label(self) -> &'static str {
        match self {
            Standing::Pass => "PASS",
            Standing::Skip => "SKIP",
            Standing::Fail => "FAIL",
            Standing::KnownFail => "XFAIL",
            Standing::UnexpectedPass => "XPASS",
        }
    }
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub id: &'static str,
    pub level: CaseLevel,
    pub rule: &'static str,
    pub summary: &'static str,
    pub standing: Standing,
    pub outcome: Outcome,
    pub duration_ms: f64,
    /// For a failure found on a generated input: the command replaying it.
    pub replay: Option<String>,
}

impl CaseReport {
    /// Whether this case makes the run fail.
    pub fn fails_run(&self) -> bool {
        match self.standing {
            Standing::Fail => self.level == CaseLevel::Must,
            Standing::UnexpectedPass => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub service: Service,
    pub target: String,
    pub seed: u64,
    pub cases_per_property: u32,
    pub results: Vec<CaseReport>,
    /// The whole run, in milliseconds.
    pub duration_ms: f64,
    /// `--case-timeout`, in seconds.
    pub case_timeout_s: f64,
}

impl Report {
    /// Exit status 0: no MUST case failed (known-failing aside) and no
    /// known-failing case passed.
    pub fn passed(&self) -> bool {
        !self.results.iter().any(CaseReport::fails_run)
    }

    pub fn get(&self, id: &str) -> Option<&CaseReport> {
        self.results.iter().find(|r| r.id == id)
    }

    pub fn count(&self, standing: Standing) -> usize {
        self.results
            .iter()
            .filter(|r| r.standing == standing)
            .count()
    }
}

/// Runs every selected case, one after another: cases open sessions and read
/// load metrics, and running them side by side would make each the others'
/// noise.
pub async fn run(config: &RunConfig) -> Result<Report, RunError> {
    let selected = config.selected();
    if selected.is_empty() {
        return Err(RunError::NothingSelected {
            service: config.service,
            selection: config.selection(),
        });
    }
    let endpoint =
        client::endpoint_with(&config.target, config.tls.as_ref()).map_err(|source| {
            RunError::Target {
                target: config.target.clone(),
                source,
            }
        })?;
    // Connected once up front: the channel reconnects on its own later, so a
    // worker that restarts mid-run fails only the cases it was gone for.
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| RunError::Unreachable {
            target: config.target.clone(),
            reason: voxwire_service::error_chain(&e),
        })?;
    let run_started = Instant::now();
    let mut results: Vec<CaseReport> = Vec::new();
    for case in selected {
        let ctx = Ctx::new(
            channel.clone(),
            case.id,
            config.seed,
            config.cases,
            config.drain.clone(),
            Some(config.case_timeout / INPUT_SHARE),
        );
        let started = Instant::now();
        let subsumed_by = crate::catalogue::SUBSUMED
            .iter()
            .filter(|(id, _)| *id == case.id)
            .find_map(|(_, by)| {
                results
                    .iter()
                    .find(|r| r.id == *by && matches!(r.outcome, Outcome::Fail(_)))
            });
        let outcome = match subsumed_by {
            // The same rule already failed where it is checked most
            // directly: a second failure would only repeat it.
            Some(earlier) => Outcome::Skip {
                reason: format!(
                    "{} already failed in {}: not checked again",
                    earlier.rule, earlier.id
                ),
            },
            None => run_one(case, ctx, config.case_timeout).await,
        };
        let known = config.known_failing.contains(case.id);
        let standing = match (&outcome, known) {
            (Outcome::Fail(_), false) => Standing::Fail,
            (Outcome::Fail(_), true) => Standing::KnownFail,
            (Outcome::Pass { .. }, true) => Standing::UnexpectedPass,
            (Outcome::Pass { .. }, false) => Standing::Pass,
            (Outcome::Skip { .. }, _) => Standing::Skip,
        };
        let replay = match &outcome {
            Outcome::Fail(failure) => failure.seed.map(|seed| config.replay(case.id, seed)),
            _ => None,
        };
        results.push(CaseReport {
            id: case.id,
            level: case.level,
            rule: case.rule_id(),
            summary: case.summary,
            standing,
            outcome,
            duration_ms: crate::outcome::ms(started.elapsed()),
            replay,
        });
    }
    Ok(Report {
        service: config.service,
        target: config.target.clone(),
        seed: config.seed,
        cases_per_property: config.cases,
        results,
        duration_ms: crate::outcome::ms(run_started.elapsed()),
        case_timeout_s: config.case_timeout.as_secs_f64(),
    })
}

/// Runs one case under `timeout`. Past it the case fails "no answer within
/// N s" and is stopped: its property stops generating inputs and its calls
/// are cancelled, so nothing of it runs on beside the next case.
async fn run_one(case: &CaseDef, ctx: Ctx, timeout: Duration) -> Outcome {
    let cancel = ctx.clone();
    let mut task = tokio::spawn((case.run)(ctx));
    let outcome = match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(result)) => Outcome::from_result(result),
        Ok(Err(join)) => Outcome::Fail(Failure::new(
            "the case to run to its end",
            format!("it panicked: {join}"),
        )),
        Err(_) => {
            task.abort();
            Outcome::Fail(Failure::new(
                format!(
                    "the case to finish within {} s (--case-timeout)",
                    timeout.as_secs_f64()
                ),
                format!(
                    "no answer within {} s: the worker left a call unanswered (or is too \
                     slow for this case); the case was stopped and the run went on",
                    timeout.as_secs_f64()
                ),
            ))
        }
    };
    // Whatever the outcome, a property still generating inputs on its
    // blocking thread stops now, and what a stopped case left open is closed.
    cancel.cancel();
    cancel.end_open_sessions().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_failing_reads_ids_and_comments_and_rejects_typos() {
        let ids =
            parse_known_failing("# fleet v1\ntts/health/check\n\n  tts/health/watch # no Watch\n")
                .expect("valid list");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains("tts/health/watch"));
        let err = parse_known_failing("tts/health/chek\n").expect_err("a typo is an error");
        assert!(matches!(err, RunError::UnknownCase { line: 1, .. }));
    }

    #[test]
    fn globs_select_and_skip() {
        let mut config = RunConfig::new("127.0.0.1:1", Service::Tts);
        config.run = Some(Glob::new("tts/frame/*"));
        config.skip = Some(Glob::new("*seq*"));
        let ids: Vec<&str> = config.selected().iter().map(|c| c.id).collect();
        assert!(ids.contains(&"tts/frame/size"));
        assert!(!ids.iter().any(|id| id.contains("seq")));
        assert!(ids.iter().all(|id| id.starts_with("tts/frame/")));
        config.service = Service::Stt;
        assert!(config.selected().is_empty());
    }
}
