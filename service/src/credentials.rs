//! Bearer tokens, written once for both sides: a [`Secret`] that never shows
//! in `Debug`, `Display` or logs, read from a flag, an environment variable or
//! a file; and the client interceptor that sends it as `authorization:
//! Bearer <token>` metadata. The orchestrator checks it (orchestrator/src/auth.rs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Never carries the token itself.
    #[error("the auth token {0}")]
    Invalid(&'static str),
    #[error("give the token either inline or as a file, not both")]
    Both,
}

/// A bearer token. Its text is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// Tokens travel in HTTP/2 headers: printable ASCII without spaces, so
    /// the same token works in `authorization` and in a WebSocket query.
    pub fn new(token: impl Into<String>) -> Result<Secret, CredentialsError> {
        let token = token.into();
        if token.is_empty() {
            return Err(CredentialsError::Invalid("is empty"));
        }
        if token.len() > 4096 {
            return Err(CredentialsError::Invalid("is longer than 4096 bytes"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialsError::Invalid(
                "must be printable ASCII without spaces",
            ));
        }
        Ok(Secret(token))
    }

    /// Reads a token file; surrounding white space (a trailing newline) is
    /// not part of the token.
    pub fn from_file(path: &Path) -> Result<Secret, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Secret::new(text.trim())
    }

    /// A fresh random token (32 hex digits from the OS's random source), for
    /// development set-ups (`voxctl certs` writes one).
    pub fn generate() -> Result<Secret, CredentialsError> {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|source| CredentialsError::Read {
                path: PathBuf::from("/dev/urandom"),
                source,
            })?;
        Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `authorization` metadata value carrying this token.
    pub fn bearer_value(&self) -> MetadataValue<Ascii> {
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0))
            // Unreachable: `new` admits printable ASCII only.
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer"));
        value.set_sensitive(true);
        value
    }
}

impl FromStr for Secret {
    type Err = CredentialsError;

    fn from_str(s: &str) -> Result<Secret, CredentialsError> {
        Secret::new(s)
    }
}

/// The clap value parser of token flags: a refusal names the flag and the
/// rule, never the value (clap's own message quotes it, and a mistyped token
/// is still mostly a token).
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        use clap::error::ErrorKind;
        let flag = arg.map_or_else(
            || "the token".to_string(),
            |arg| match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => arg.get_id().to_string(),
            },
        );
        let refuse = |kind, reason: &str| {
            clap::Error::raw(kind, format!("the value of {flag} (not shown) {reason}\n"))
                .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse(ErrorKind::InvalidUtf8, "is not UTF-8"))?;
        Secret::new(text).map_err(|error| match error {
            CredentialsError::Invalid(reason) => refuse(ErrorKind::ValueValidation, reason),
            other => refuse(ErrorKind::ValueValidation, &other.to_string()),
        })
    }
}

/// The token from an inline value or a file (at most one of them).
pub fn resolve_token(
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, CredentialsError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(CredentialsError::Both),
        (Some(token), None) => Ok(Some(token.clone())),
        (None, Some(path)) => Secret::from_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Client interceptor: adds `authorization: Bearer <token>` to every call
/// when a token is set, and nothing otherwise.
#[derive(Clone, Debug, Default)]
pub struct BearerToken {
    token: Option<Secret>,
}

impl BearerToken {
    pub fn new(token: Option<Secret>) -> Self {
        BearerToken { token }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.bearer_value());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn debug_and_display_never_show_the_token() {
        let secret = Secret::new("hunter2-token").expect("valid");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret}").contains("hunter2"));
        let interceptor = BearerToken::new(Some(secret));
        assert!(!format!("{interceptor:?}").contains("hunter2"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "with space", "tab\there", "é"] {
            assert!(Secret::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_interceptor_sets_the_bearer_header() {
        let mut interceptor = BearerToken::new(Some(Secret::new("abc").expect("valid")));
        let request = interceptor.call(Request::new(())).expect("ok");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc")
        );
        let mut none = BearerToken::default();
        let request = none.call(Request::new(())).expect("ok");
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn a_token_file_is_trimmed() {
        let path = std::env::temp_dir().join(format!("voxwire-token-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write");
        let token = resolve_token(None, Some(&path))
            .expect("read")
            .expect("some");
        assert_eq!(token.expose(), "s3cret");
        assert!(matches!(
            resolve_token(Some(&token), Some(&path)),
            Err(CredentialsError::Both)
        ));
        let _ = std::fs::remove_file(&path);
    }
}
