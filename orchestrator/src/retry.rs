//! Which failures a turn may retry: only those that say "try again, maybe
//! elsewhere" and only before the client saw any output; and the one loop of
//! attempts every turn runs ([`run_turn`]), TTS and STT alike.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use tracing::Instrument;
use voxwire_service::metrics::code_label;

use crate::config::DispatchSettings;
use crate::metrics::{self, Metrics};
use crate::pool::{Lease, Pool};

/// UNAVAILABLE (worker down or draining), RESOURCE_EXHAUSTED (worker full)
/// and DEADLINE_EXCEEDED (worker too slow to start). Everything else
/// (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, INTERNAL...) would fail
/// the same way again, or is the worker breaking the protocol.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded
    )
}

/// A worker that went away during a call (process killed, connection reset)
/// surfaces as UNKNOWN carrying the transport error, not as a status the
/// worker sent (those come from trailers and carry no source). That is the
/// worker being unavailable, so it is reported, and retried, as UNAVAILABLE.
pub fn lost_worker_as_unavailable(status: Status) -> Status {
    if status.code() == Code::Unknown && std::error::Error::source(&status).is_some() {
        Status::unavailable(status.message().to_string())
    } else {
        status
    }
}

/// Awaits a worker's first answer of an attempt (StartSession's reply,
/// Recognize's response). Past `soft`, the deadline derived from what this
/// worker usually takes, the attempt is abandoned when `elsewhere()` says
/// another worker could take it; otherwise it is awaited up to `hard`, the
/// fixed deadline: with nowhere else to go, a slow answer beats none.
/// `Err` carries how long it waited.
pub async fn first_answer<F: std::future::Future>(
    answer: F,
    soft: Duration,
    hard: Duration,
    elsewhere: impl Fn() -> bool,
) -> Result<F::Output, Duration> {
    tokio::pin!(answer);
    if let Ok(value) = tokio::time::timeout(soft, &mut answer).await {
        return Ok(value);
    }
    if elsewhere() || hard <= soft {
        return Err(soft);
    }
    tokio::time::timeout(hard - soft, answer)
        .await
        .map_err(|_| hard)
}

/// How one attempt of a turn failed.
#[derive(Debug)]
pub struct Failed {
    pub status: Status,
    /// Something irrevocable happened first (audio reached the client, the
    /// audio sent can no longer be replayed): the turn ends with this.
    pub committed: bool,
    /// The client broke or left its side: never the worker's fault, and
    /// nothing to retry.
    pub client: bool,
}

impl Failed {
    /// A failure the turn may still retry elsewhere, if its code allows.
    pub fn retryable(status: Status) -> Failed {
        Failed {
            status,
            committed: false,
            client: false,
        }
    }
}

/// One turn's part in [`run_turn`].
pub trait Turn: Send {
    type Done: Send;

    /// The worker this turn should go to when it can (its session is there).
    fn preferred(&self) -> Option<String> {
        None
    }

    /// One attempt on the worker `lease` holds.
    fn attempt(&mut self, lease: &Lease)
        -> impl Future<Output = Result<Self::Done, Failed>> + Send;

    /// Before the next attempt, after one failed with `code`.
    fn retrying(&mut self, _code: Code) {}
}

/// What a successful turn took.
#[derive(Debug)]
pub struct Attempted<D> {
    pub done: D,
    pub endpoint: String,
    pub attempts: u32,
}

/// Runs a turn's attempts: a worker from the pool (never one already tried
/// for this turn), one attempt, and after a failure that may succeed
/// elsewhere (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, nothing
/// committed, attempts left), a backoff and the next worker. A worker past a
/// deadline is marked UNRESPONSIVE. Counts the turn in flight, its retries
/// and its outcome under `kind`.
pub async fn run_turn<T: Turn>(
    kind: &'static str,
    pool: &Pool,
    settings: &DispatchSettings,
    metrics: &Arc<Metrics>,
    turn: &mut T,
) -> Result<Attempted<T::Done>, Status> {
    let _in_flight = metrics.turn_in_flight(kind);
    let mut tried: Vec<String> = Vec::new();
    let mut attempt = 0u32;
    let result = loop {
        attempt += 1;
        let preferred = turn.preferred();
        let lease = match pool
            .acquire(preferred.as_deref(), &tried, settings.ready_wait)
            .await
        {
            Ok(lease) => lease,
            Err(none) => break Err(Status::from(none)),
        };
        let address = lease.endpoint.address.clone();
        let span = tracing::info_span!("dispatch", endpoint = %address, attempt);
        match turn.attempt(&lease).instrument(span).await {
            Ok(done) => {
                break Ok(Attempted {
                    done,
                    endpoint: address,
                    attempts: attempt,
                })
            }
            Err(failed) if failed.client => break Err(failed.status),
            Err(failed) => {
                let code = failed.status.code();
                if code == Code::DeadlineExceeded {
                    // Silence past a deadline: maybe wedged. Keep later
                    // turns away until it answers a load poll again.
                    lease.endpoint.mark_unresponsive(failed.status.message());
                }
                let retry =
                    !failed.committed && is_retryable(code) && settings.retry.allows_after(attempt);
                tracing::warn!(kind, endpoint = %address, attempt, status = %failed.status, retry, "attempt failed");
                if !retry {
                    break Err(failed.status);
                }
                metrics.inc(
                    metrics::RETRIES,
                    &[("kind", kind), ("code", code_label(code))],
                );
                turn.retrying(code);
                tried.push(address);
                drop(lease);
                tokio::time::sleep(settings.retry.delay(attempt)).await;
            }
        }
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(status) => code_label(status.code()),
    };
    metrics.inc(metrics::TURNS, &[("kind", kind), ("outcome", outcome)]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_worker_is_left_at_the_soft_deadline_only_when_another_can_take_it() {
        let soft = Duration::from_millis(50);
        let hard = Duration::from_millis(300);
        let silent = std::future::pending::<()>;
        let started = std::time::Instant::now();
        assert_eq!(first_answer(silent(), soft, hard, || true).await, Err(soft));
        assert!(started.elapsed() < hard, "{:?}", started.elapsed());
        let started = std::time::Instant::now();
        assert_eq!(
            first_answer(silent(), soft, hard, || false).await,
            Err(hard)
        );
        assert!(
            started.elapsed() >= hard,
            "alone: waited to the fixed deadline"
        );
        let slow = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            7
        };
        assert_eq!(first_answer(slow, soft, hard, || false).await, Ok(7));
    }

    #[test]
    fn only_transient_codes_retry() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Internal,
            Code::Unimplemented,
            Code::Cancelled,
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }

    /// The error tonic gives when a worker's connection dies mid-call.
    #[derive(Debug)]
    struct ConnectionLost;
    impl std::fmt::Display for ConnectionLost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error reading a body from connection")
        }
    }
    impl std::error::Error for ConnectionLost {}

    #[test]
    fn worker_killed_before_first_frame_is_unavailable_not_unknown() {
        let lost = Status::from_error(Box::new(ConnectionLost));
        assert_eq!(lost.code(), Code::Unknown, "tonic's view: {lost:?}");
        let mapped = lost_worker_as_unavailable(lost);
        assert_eq!(mapped.code(), Code::Unavailable);
        assert!(is_retryable(mapped.code()));
        assert!(mapped.message().contains("error reading a body"));

        // UNKNOWN sent by the worker itself is its answer: not retried.
        let sent = lost_worker_as_unavailable(Status::unknown("the worker says so"));
        assert_eq!(sent.code(), Code::Unknown);
        let other = lost_worker_as_unavailable(Status::invalid_argument("bad"));
        assert_eq!(other.code(), Code::InvalidArgument);
    }
}
