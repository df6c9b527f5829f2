//! Which failures a turn may retry: only those that say "try again, maybe
//! elsewhere" and only before the client saw any output.

use std::time::Duration;

use tonic::{Code, Status};

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
