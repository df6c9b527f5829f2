//! `voxctl certs`: the development PKI of `just certs` (a CA, server and
//! client certificates) and a bearer token for the orchestrator, written into
//! one directory. Never for production.

use std::path::{Path, PathBuf};

use voxwire_service::credentials::{CredentialsError, Secret};
use voxwire_service::tls::{DevPki, TlsError, DEV_SERVER_NAMES};

/// The name of the development CA's certificate.
const CA_NAME: &str = "voxwire development CA";
/// The token's file in the directory.
const TOKEN_FILE: &str = "token";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("restricting {}", path.display())]
    Restrict {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes a fresh development CA and the certificates it issued into `dir`
/// (created if missing). The server certificate carries
/// [`DEV_SERVER_NAMES`] and `extra_names`. Returns the files written.
pub fn write_pki(dir: &Path, extra_names: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    let mut names: Vec<&str> = DEV_SERVER_NAMES.to_vec();
    names.extend(extra_names.iter().map(String::as_str));
    let pki = DevPki::generate(CA_NAME, &names)?;
    Ok(pki.write_to(dir)?)
}

/// Writes a fresh bearer token to `dir/token`, readable by the owner only,
/// unless that file exists: the token is kept across runs because clients
/// hold it. Returns the file when it was written.
pub fn write_token(dir: &Path) -> Result<Option<PathBuf>, CertsError> {
    let token = dir.join(TOKEN_FILE);
    if token.exists() {
        return Ok(None);
    }
    let secret = Secret::generate()?;
    std::fs::write(&token, format!("{}\n", secret.expose())).map_err(|source| {
        CertsError::Write {
            path: token.clone(),
            source,
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| CertsError::Restrict {
                path: token.clone(),
                source,
            },
        )?;
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_pki_and_a_token_and_keeps_an_existing_token() {
        let dir = std::env::temp_dir().join(format!("voxctl-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let written = write_pki(&dir, &["example.test".to_string()]).expect("pki");
        assert!(!written.is_empty() && written.iter().all(|p| p.is_file()));
        let token = write_token(&dir).expect("token").expect("a new token");
        let first = std::fs::read_to_string(&token).expect("token file");
        assert_eq!(first.trim().len(), 32, "32 hex digits");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Clients hold the token: a second run keeps it.
        assert_eq!(write_token(&dir).expect("second run"), None);
        assert_eq!(std::fs::read_to_string(&token).expect("token file"), first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
