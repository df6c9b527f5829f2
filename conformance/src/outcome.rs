//! The assertion model: a case returns a [`Verdict`] or a [`Failure`] that
//! says what the protocol expected, what the worker did, the minimal input
//! that shows it and the stream as it arrived.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use voxwire_proto::Violation;

/// One message of a stream, as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceEntry {
    pub sequence_number: i64,
    /// Bytes of audio (TTS) or the event in short (STT).
    pub detail: String,
    pub is_final: bool,
    /// Since the call started.
    pub at_ms: f64,
}

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub expected: String,
    pub actual: String,
    /// The rule the validator named, when a validator judged it.
    pub violated_rule: Option<String>,
    /// The (shrunk) input that shows the failure.
    pub input: Option<String>,
    /// The stream that failed; `focus` indexes the offending message.
    pub trace: Vec<TraceEntry>,
    pub focus: Option<usize>,
    /// The seed that replays exactly this input with `--cases 1`.
    pub seed: Option<u64>,
}

impl Failure {
    pub fn new(expected: impl Into<String>, actual: impl Into<String>) -> Failure {
        Failure {
            expected: expected.into(),
            actual: actual.into(),
            violated_rule: None,
            input: None,
            trace: Vec::new(),
            focus: None,
            seed: None,
        }
    }

    /// A validator's verdict on a stream.
    pub fn violation(violation: &Violation, trace: Vec<TraceEntry>, focus: Option<usize>) -> Self {
        Failure {
            expected: format!("{}: {}", violation.rule, violation.rule.summary()),
            actual: violation.detail.clone(),
            violated_rule: Some(violation.rule.id().to_string()),
            input: None,
            trace,
            focus,
            seed: None,
        }
    }

    pub fn with_trace(mut self, trace: Vec<TraceEntry>, focus: Option<usize>) -> Self {
        self.trace = trace;
        self.focus = focus;
        self
    }

    pub fn with_input(mut self, input: impl Into<String>) -> Self {
        self.input = Some(input.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}; got {}", self.expected, self.actual)
    }
}

/// A case that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass(Option<String>),
    /// The worker gives the case nothing to check (a metric it does not
    /// advertise, a rule another violation hid).
    Skip(String),
}

pub type CaseResult = Result<Verdict, Failure>;

pub fn pass() -> CaseResult {
    Ok(Verdict::Pass(None))
}

pub fn pass_with(note: impl Into<String>) -> CaseResult {
    Ok(Verdict::Pass(Some(note.into())))
}

pub fn skip(reason: impl Into<String>) -> CaseResult {
    Ok(Verdict::Skip(reason.into()))
}

/// Fails with `expected` / `actual` unless `ok`.
pub fn ensure(
    ok: bool,
    expected: impl Into<String>,
    actual: impl Into<String>,
) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure::new(expected, actual))
    }
}

/// The final state of a case in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Pass { note: Option<String> },
    Fail(Failure),
    Skip { reason: String },
}

impl Outcome {
    pub fn from_result(result: CaseResult) -> Outcome {
        match result {
            Ok(Verdict::Pass(note)) => Outcome::Pass { note },
            Ok(Verdict::Skip(reason)) => Outcome::Skip { reason },
            Err(failure) => Outcome::Fail(failure),
        }
    }

    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass { .. } => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip { .. } => "SKIP",
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}
