//! TLS on every gRPC link, written once: the server side (a certificate and
//! key, and optionally a client CA, which makes the link mutual TLS: no
//! client without a certificate from that CA gets past the handshake) and the
//! client side (the CA to trust, optionally a client identity), both from PEM
//! files named by flags. rustls through tonic, with the ring provider.
//!
//! Also a development PKI ([`DevPki`]): a CA and server and client
//! certificates made in process, for `voxctl certs` and for tests.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("{0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Reads a PEM file and checks it holds a block of the expected kind, so a
/// swapped or empty file is named at start-up rather than as a handshake
/// failure later.
fn read_pem(path: &Path, what: &'static str, marker: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        let line = line.trim();
        line.starts_with("-----BEGIN ") && line.contains(marker)
    });
    if !found {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(bytes)
}

fn read_cert(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem(path, "certificate", "CERTIFICATE")
}

fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem(path, "private key", "PRIVATE KEY")
}

/// Server-side TLS flags, shared by every server (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`). Without `--tls-cert` the server speaks plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long = "tls-cert", env = "VOXWIRE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "VOXWIRE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate issued by this CA (PEM): mutual TLS.
    #[arg(long = "tls-client-ca", env = "VOXWIRE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The configured TLS, `None` for plaintext; a half-given configuration
    /// (a key without a certificate, a client CA without TLS) is an error.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    return Err(TlsError::Config(
                        "--tls-client-ca needs --tls-cert and --tls-key".into(),
                    ));
                }
                Ok(None)
            }
            (Some(cert), Some(key)) => {
                ServerTls::from_files(cert, key, self.tls_client_ca.as_deref()).map(Some)
            }
            _ => Err(TlsError::Config(
                "--tls-cert and --tls-key go together".into(),
            )),
        }
    }
}

/// A server's TLS: its identity and, for mutual TLS, the CA client
/// certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    mutual: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is in `config`; only say what kind of TLS this is.
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let cert = read_cert(cert)?;
        let key = read_key(key)?;
        let client_ca = client_ca.map(read_cert).transpose()?;
        Ok(ServerTls::from_pem(&cert, &key, client_ca.as_deref()))
    }

    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> ServerTls {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            // client_auth_optional stays false: a client without a
            // certificate from this CA fails the handshake.
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        ServerTls {
            config,
            mutual: client_ca.is_some(),
        }
    }

    /// True when clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }
}

/// `Server::builder()`, with TLS when `tls` is given: the one way every
/// voxwire server starts its gRPC builder.
pub fn server_builder(tls: Option<&ServerTls>) -> Result<Server, TlsError> {
    let builder = Server::builder();
    match tls {
        Some(tls) => Ok(builder.tls_config(tls.config())?),
        None => Ok(builder),
    }
}

/// Client-side TLS flags for command-line clients (`--tls-ca`, `--tls-cert`,
/// `--tls-key`, `--tls-domain`). Without `--tls-ca` the client speaks
/// plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Connect over TLS, trusting servers whose certificate this CA issued (PEM).
    #[arg(long = "tls-ca", env = "VOXWIRE_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long = "tls-cert", env = "VOXWIRE_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "VOXWIRE_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the target's host).
    #[arg(long = "tls-domain", env = "VOXWIRE_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
}

impl ClientTlsArgs {
    pub fn load(&self) -> Result<Option<ClientTls>, TlsError> {
        ClientTls::from_flags(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
    }
}

/// A client's TLS: the CA it trusts, optionally its own identity, and the
/// name to check the server's certificate against.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
    domain: Option<String>,
    has_identity: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("domain", &self.domain)
            .field("client_certificate", &self.has_identity)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From the flags of a client; `None` when no CA is given (plaintext).
    pub fn from_flags(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        domain: Option<&str>,
    ) -> Result<Option<ClientTls>, TlsError> {
        let Some(ca) = ca else {
            if cert.is_some() || key.is_some() || domain.is_some() {
                return Err(TlsError::Config(
                    "a client certificate or TLS domain needs a CA to trust (--tls-ca)".into(),
                ));
            }
            return Ok(None);
        };
        let ca = read_cert(ca)?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((read_cert(cert)?, read_key(key)?)),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate and its key go together".into(),
                ))
            }
        };
        let identity = identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
        Ok(Some(ClientTls::from_pem(&ca, identity, domain)))
    }

    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>, domain: Option<&str>) -> Self {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = domain {
            config = config.domain_name(domain);
        }
        ClientTls {
            config,
            domain: domain.map(str::to_string),
            has_identity: identity.is_some(),
        }
    }

    pub fn config(&self) -> ClientTlsConfig {
        self.config.clone()
    }
}

/// An endpoint for `target` (`HOST:PORT`, or a URI): `https://` with `tls`,
/// `http://` without. Only the scheme and TLS are set here; callers add
/// their own timeouts and windows.
pub fn endpoint(target: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let authority = target
        .split_once("://")
        .map_or(target, |(_, rest)| rest)
        .trim_end_matches('/');
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))?;
    match tls {
        Some(tls) => Ok(endpoint.tls_config(tls.config())?),
        None => Ok(endpoint),
    }
}

/// Connects at once (see [`endpoint`]).
pub async fn connect(target: &str, tls: Option<&ClientTls>) -> Result<Channel, TlsError> {
    Ok(endpoint(target, tls)?.connect().await?)
}

/// A development PKI: one CA, one server certificate for the given names
/// (DNS names or IP addresses), one client certificate. For `just certs`
/// and tests; never for production (keys are written unencrypted).
pub struct DevPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

/// Names the development server certificate carries: loopback, and the
/// service names of deploy/ (compose services and Kubernetes Services).
pub const DEV_SERVER_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "orchestrator",
    "tts-worker",
    "stt-worker",
    // One name every worker's certificate carries, for --worker-tls-domain when
    // workers are dialled by address (dns:// targets resolve to pod/container IPs).
    "voxwire-worker",
    "voxwire-orchestrator",
    "voxwire-tts-worker",
    "voxwire-stt-worker",
    "tts-worker.voxwire.svc.cluster.local",
    "stt-worker.voxwire.svc.cluster.local",
    "orchestrator.voxwire.svc.cluster.local",
];

impl DevPki {
    /// A fresh CA named `ca_name` and certificates it issued.
    pub fn generate(ca_name: &str, server_names: &[&str]) -> Result<DevPki, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>,
                    common_name: &str,
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String), TlsError> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            server_names.iter().map(|n| n.to_string()).collect(),
            "voxwire server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            vec!["voxwire-client".to_string()],
            "voxwire client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(DevPki {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// The files `just certs` writes, by name.
    pub fn files(&self) -> [(&'static str, &str); 5] {
        [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server_cert_pem),
            ("server-key.pem", &self.server_key_pem),
            ("client.pem", &self.client_cert_pem),
            ("client-key.pem", &self.client_key_pem),
        ]
    }

    /// Writes [`DevPki::files`] into `dir` (created if missing); keys are
    /// readable by the owner only.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::new();
        for (name, pem) in self.files() {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(|source| TlsError::Write {
                path: path.clone(),
                source,
            })?;
            #[cfg(unix)]
            if name.ends_with("-key.pem") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |source| TlsError::Write {
                        path: path.clone(),
                        source,
                    },
                )?;
            }
            written.push(path);
        }
        Ok(written)
    }

    pub fn server_tls(&self, require_client_cert: bool) -> ServerTls {
        ServerTls::from_pem(
            self.server_cert_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
            require_client_cert.then_some(self.ca_pem.as_bytes()),
        )
    }

    /// A client trusting this CA, with the client certificate when `identity`.
    pub fn client_tls(&self, identity: bool, domain: Option<&str>) -> ClientTls {
        ClientTls::from_pem(
            self.ca_pem.as_bytes(),
            identity.then_some((
                self.client_cert_pem.as_bytes(),
                self.client_key_pem.as_bytes(),
            )),
            domain,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_given_flags_are_refused() {
        let args = ServerTlsArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(args.load(), Err(TlsError::Config(_))));
        let args = ServerTlsArgs {
            tls_client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(matches!(args.load(), Err(TlsError::Config(_))));
        assert!(ServerTlsArgs::default()
            .load()
            .expect("plaintext")
            .is_none());
        assert!(matches!(
            ClientTls::from_flags(None, Some(Path::new("c.pem")), None, None),
            Err(TlsError::Config(_))
        ));
    }

    #[test]
    fn dev_pki_writes_loadable_files_and_a_key_is_not_a_certificate() {
        let dir = std::env::temp_dir().join(format!("voxwire-tls-test-{}", std::process::id()));
        let pki = DevPki::generate("test CA", DEV_SERVER_NAMES).expect("pki");
        pki.write_to(&dir).expect("written");
        let args = ServerTlsArgs {
            tls_cert: Some(dir.join("server.pem")),
            tls_key: Some(dir.join("server-key.pem")),
            tls_client_ca: Some(dir.join("ca.pem")),
        };
        assert!(args.load().expect("loads").expect("tls").is_mutual());
        let swapped = ServerTlsArgs {
            tls_cert: Some(dir.join("server-key.pem")),
            tls_key: Some(dir.join("server.pem")),
            tls_client_ca: None,
        };
        assert!(matches!(swapped.load(), Err(TlsError::NotPem { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn endpoint_scheme_follows_tls() {
        let pki = DevPki::generate("test CA", &["localhost"]).expect("pki");
        let plain = endpoint("127.0.0.1:1", None).expect("plain");
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let tls = pki.client_tls(false, None);
        let secure = endpoint("http://127.0.0.1:1", Some(&tls)).expect("tls");
        assert_eq!(secure.uri().scheme_str(), Some("https"));
    }
}
