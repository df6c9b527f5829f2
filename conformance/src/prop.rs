//! Drives a case's property with proptest: one `TestRunner` per generated
//! input, seeded from `--seed` plus the input's index, so the input that
//! failed (after shrinking) is replayed exactly by `--seed N --cases 1`.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::client::Ctx;
use crate::outcome::{CaseResult, Failure, Verdict};

/// What one input showed, short of a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The rule was checked on this input and held.
    Checked,
    /// Something else went wrong first (another rule broken, the call
    /// failed), so this input says nothing about the rule.
    Blocked(String),
}

pub(crate) type ProbeFuture = Pin<Box<dyn Future<Output = Result<Probe, Failure>> + Send>>;

/// Shrinking re-runs gRPC calls: bounded so one failure costs seconds, not minutes.
const MAX_SHRINK_ITERS: u32 = 48;
const MAX_SHRINK_MS: u32 = 20_000;
/// The time shrinking may take in all, calls included: proptest checks its
/// own limit only between runs, and one run against a silent worker lasts
/// a whole call deadline. Past it (or once the case is cancelled) the
/// remaining shrink steps are not run, and the smallest failing input so
/// far is the one reported.
const SHRINK_BUDGET: std::time::Duration = std::time::Duration::from_millis(MAX_SHRINK_MS as u64);

fn rng(seed: u64, case_id: &str) -> TestRng {
    // FNV-1a of the id: different cases draw different inputs from one seed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in case_id.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&hash.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn config() -> Config {
    Config {
        cases: 1,
        failure_persistence: None,
        max_shrink_iters: MAX_SHRINK_ITERS,
        max_shrink_time: MAX_SHRINK_MS,
        ..Config::default()
    }
}

/// The input `check` tests first for input `index` of a case: the same
/// runner, seed and strategy, so a golden (crate::regress) records exactly the
/// exchange the case has with the worker before any shrinking.
pub(crate) fn draw<S: Strategy>(
    strategy: &S,
    seed: u64,
    index: u32,
    case_id: &str,
) -> Result<S::Value, String> {
    let input_seed = seed.wrapping_add(u64::from(index));
    let mut runner = TestRunner::new_with_rng(config(), rng(input_seed, case_id));
    let drawn = std::cell::RefCell::new(None);
    runner
        .run(strategy, |value| {
            drawn.borrow_mut().get_or_insert(value);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    drawn
        .into_inner()
        .ok_or_else(|| "the strategy produced no input".to_string())
}

/// Runs `test` on `ctx.cases()` inputs drawn from the strategy `make`
/// builds (built on the runner's thread: boxed strategies are not `Send`). The first
/// failing input is shrunk; the failure returned is the one the minimal input
/// produced, with that input and its replay seed attached.
pub(crate) async fn check<S, M, F>(ctx: &Ctx, make: M, test: F) -> CaseResult
where
    S: Strategy,
    M: FnOnce() -> S + Send + 'static,
    S::Value: Debug,
    F: Fn(S::Value) -> ProbeFuture + Send + Sync + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let (seed, cases, case_id) = (ctx.seed(), ctx.cases(), ctx.case_id());
    let budget = ctx.input_budget();
    let ctx = ctx.clone();
    // The runner's API is synchronous; it runs on a blocking thread and
    // drives each async probe on the caller's runtime.
    let run = tokio::task::spawn_blocking(move || {
        let strategy = make();
        let checked = AtomicUsize::new(0);
        let blocked: Mutex<Option<String>> = Mutex::new(None);
        let failed_at: Mutex<Option<std::time::Instant>> = Mutex::new(None);
        let started = std::time::Instant::now();
        let mut drawn = cases;
        for i in 0..cases {
            if ctx.is_cancelled() {
                // The case is over (its deadline passed): no more inputs.
                break;
            }
            if i > 0 && budget.is_some_and(|budget| started.elapsed() >= budget) {
                // A slow worker: the inputs that fit were checked; more
                // would run into the case deadline and fail an honest worker.
                drawn = i;
                break;
            }
            let input_seed = seed.wrapping_add(u64::from(i));
            let mut runner = TestRunner::new_with_rng(config(), rng(input_seed, case_id));
            let last: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
            let result = runner.run(&strategy, |value| {
                let left = failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(|at| SHRINK_BUDGET.saturating_sub(at.elapsed()));
                if ctx.is_cancelled() || left.is_some_and(|left| left.is_zero()) {
                    // Not run: to the shrinker this input does not fail, so
                    // it keeps the smallest failing one and soon stops.
                    return Ok(());
                }
                let input = format!("{value:?}");
                let probe = test(value);
                let outcome = handle.block_on(async {
                    tokio::select! {
                        outcome = probe => Some(outcome),
                        () = ctx.cancelled() => None,
                        () = sleep_or_pending(left) => None,
                    }
                });
                let Some(outcome) = outcome else {
                    return Ok(());
                };
                match outcome {
                    Ok(Probe::Checked) => {
                        checked.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(Probe::Blocked(why)) => {
                        *blocked.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                        Ok(())
                    }
                    Err(failure) => {
                        failed_at
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(std::time::Instant::now);
                        let reason = failure.to_string();
                        // Shrinking keeps the last failing input as the
                        // current minimum, so the last failure stored is the
                        // minimal input's.
                        *last.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(failure.with_input(input));
                        Err(TestCaseError::fail(reason))
                    }
                }
            });
            match result {
                Ok(()) => {}
                Err(TestError::Fail(reason, _)) => {
                    let stored = last.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let mut failure = stored.unwrap_or_else(|| {
                        Failure::new("the property to hold", reason.to_string())
                    });
                    failure.seed = Some(input_seed);
                    return Err(failure);
                }
                Err(TestError::Abort(reason)) => {
                    return Err(Failure::new("inputs to be generated", reason.to_string()));
                }
            }
        }
        let checked = checked.load(Ordering::Relaxed);
        let blocked = blocked.into_inner().unwrap_or_else(|e| e.into_inner());
        let short = if drawn < cases {
            format!(" (of {cases}: the rest did not fit in a third of the case timeout)")
        } else {
            String::new()
        };
        match (checked, blocked) {
            (0, Some(why)) => Ok(Verdict::Skip(format!(
                "inconclusive: no input reached the check ({why})"
            ))),
            (n, Some(why)) => Ok(Verdict::Pass(Some(format!(
                "{n} inputs checked{short}; some inputs were blocked ({why})"
            )))),
            (n, None) => Ok(Verdict::Pass(Some(format!("{n} inputs checked{short}")))),
        }
    });
    run.await
        .map_err(|e| Failure::new("the case to run to its end", format!("it panicked: {e}")))?
}

/// Sleeps `left`, or for ever when there is no limit.
async fn sleep_or_pending(left: Option<std::time::Duration>) {
    match left {
        Some(left) => tokio::time::sleep(left).await,
        None => std::future::pending().await,
    }
}
