//! Which failures a turn may retry: only those that say "try again, maybe
//! elsewhere" and only before the client saw any output.

use tonic::Code;

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

/// The label a code gets in metrics.
pub fn code_label(code: Code) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
