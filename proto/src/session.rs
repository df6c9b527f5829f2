//! What a session id is (SESSION-ID-INVALID), for both services.

use crate::rules::{Rule, Violation};

/// Longest session id accepted, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// Accepts 1 to [`MAX_SESSION_ID_BYTES`] bytes with no control characters and
/// not only white space: ids end up in logs, metrics labels and map keys.
pub fn validate_session_id(id: &str) -> Result<(), Violation> {
    let reason = if id.trim().is_empty() {
        "is empty"
    } else if id.len() > MAX_SESSION_ID_BYTES {
        "is longer than 256 bytes"
    } else if id.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(Violation::new(
        Rule::SessionIdInvalid,
        format!("session id {reason}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        assert!(validate_session_id("call-42").is_ok());
        assert!(validate_session_id("é-ü").is_ok());
    }

    #[test]
    fn rejects_empty_blank_long_and_control() {
        for id in ["", "   ", "a\nb", &"x".repeat(257)] {
            let err = validate_session_id(id).unwrap_err();
            assert_eq!(err.rule, Rule::SessionIdInvalid, "{id:?}");
        }
    }
}
