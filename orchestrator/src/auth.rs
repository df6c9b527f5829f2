//! Who may call the orchestrator, and how much at once.
//!
//! [`Gate`] wraps each client-facing gRPC service ([`Gate::guard`]): with a
//! token configured, a call without `authorization: Bearer <token>` metadata
//! fails UNAUTHENTICATED and one with another token PERMISSION_DENIED (the
//! comparison is constant-time); with `--max-sessions-per-client`, calls open
//! at once from one client address are bounded (RESOURCE_EXHAUSTED past it),
//! a call counting until its response stream ends. `grpc.health.v1` and
//! reflection are not wrapped, so probes need no token.
//!
//! The HTTP side port's WebSocket route uses the same gate through
//! [`http_guard`] (token in the `authorization` header or, for browsers,
//! which cannot set headers on a WebSocket, the `access_token` query
//! parameter; and an Origin check against cross-site pages).
//!
//! The token never reaches a log line: [`Secret`] redacts itself, and
//! refusals log the peer address and the reason only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::Frame;
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::Service;
use voxwire_service::credentials::Secret;

use crate::config::SecuritySettings;

/// The checks every guarded call goes through.
#[derive(Debug)]
pub struct Gate {
    token: Option<Secret>,
    per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    MalformedToken,
    WrongToken,
}

impl Refusal {
    pub fn status(self) -> Status {
        match self {
            Refusal::MissingToken => Status::unauthenticated(
                "missing credentials: send `authorization: Bearer <token>` metadata",
            ),
            Refusal::MalformedToken => Status::unauthenticated(
                "malformed credentials: the authorization metadata must be `Bearer <token>`",
            ),
            Refusal::WrongToken => Status::permission_denied("the bearer token is not accepted"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing token",
            Refusal::MalformedToken => "malformed token",
            Refusal::WrongToken => "wrong token",
        }
    }
}

impl Gate {
    pub fn new(token: Option<Secret>, max_sessions_per_client: usize) -> Arc<Gate> {
        Arc::new(Gate {
            token,
            per_client: max_sessions_per_client,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn from_settings(security: &SecuritySettings) -> Arc<Gate> {
        Gate::new(
            security.auth_token.clone(),
            security.max_sessions_per_client,
        )
    }

    /// True when a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks an `authorization` value (`None`: absent) against the token.
    pub fn check_authorization(&self, value: Option<&[u8]>) -> Result<(), Refusal> {
        if self.token.is_none() {
            return Ok(());
        }
        let value = value.ok_or(Refusal::MissingToken)?;
        let presented = bearer(value).ok_or(Refusal::MalformedToken)?;
        self.check_token(presented)
    }

    /// Compares a presented token in constant time (for tokens of the
    /// expected length; a length mismatch is refused at once, which tells
    /// an attacker the length at most).
    pub fn check_token(&self, presented: &[u8]) -> Result<(), Refusal> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        if bool::from(presented.ct_eq(expected.expose().as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }

    /// Counts one more open call from `peer`, or refuses it past the limit.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Admitted, Status> {
        let (Some(ip), true) = (peer, self.per_client > 0) else {
            return Ok(Admitted {
                gate: None,
                ip: None,
            });
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_client {
            tracing::warn!(peer = %ip, limit = self.per_client, "client over its session limit");
            return Err(Status::resource_exhausted(format!(
                "this client has {} calls open, the limit (--max-sessions-per-client) is {}",
                *count, self.per_client
            )));
        }
        *count += 1;
        Ok(Admitted {
            gate: Some(Arc::clone(self)),
            ip: Some(ip),
        })
    }

    /// Calls open now from `ip` (for tests and metrics).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// Wraps a generated gRPC server so every call passes this gate.
    pub fn guard<S>(self: &Arc<Self>, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            gate: Arc::clone(self),
        }
    }
}

/// The token of a `Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    // "Bearer" glued to the token ("Bearerabc") is not the scheme.
    if token.is_empty() || token.len() == rest.len() {
        return None;
    }
    Some(token)
}

/// One open call counted against its client; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    gate: Option<Arc<Gate>>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let (Some(gate), Some(ip)) = (&self.gate, self.ip) {
            let mut open = gate.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// The client's address, with or without TLS.
fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// A gRPC service behind a [`Gate`]: same name, same routes.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let peer = peer(&request);
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        if let Err(refusal) = self.gate.check_authorization(authorization) {
            tracing::warn!(
                peer = ?peer,
                path = request.uri().path(),
                reason = refusal.as_str(),
                "call refused"
            );
            let response = refusal.status().into_http();
            return Box::pin(async move { Ok(response) });
        }
        let admitted = match self.gate.admit(peer.map(|p| p.ip())) {
            Ok(admitted) => admitted,
            Err(status) => {
                let response = status.into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        // The service that was polled ready serves this call; a fresh clone
        // takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                Body::new(Held {
                    body,
                    _admitted: admitted,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted until it ends or is dropped.
struct Held {
    body: Body,
    _admitted: Admitted,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Guards an HTTP route (the web console's WebSocket): the bearer token in
/// the `authorization` header or the `access_token` query parameter, and,
/// when the request carries an `Origin` (browsers always do), an origin
/// whose host is the one the page was served from or one of
/// `allowed_origins`. [`guard_console`] layers it on the side port.
#[derive(Debug, Clone)]
pub struct HttpGuard {
    pub gate: Arc<Gate>,
    /// Extra origins allowed, e.g. `https://console.example.com`.
    pub allowed_origins: Vec<String>,
    /// The paths guarded; others pass untouched (the console's static page
    /// holds nothing secret, its WebSocket runs turns).
    pub paths: &'static [&'static str],
}

/// The paths of the side port that run turns: guarded by the token when one is set.
pub const CONSOLE_PATHS: &[&str] = &["/ws"];

/// `router` with [`http_guard`] on [`CONSOLE_PATHS`] when `security` asks
/// for a token; unchanged otherwise.
pub fn guard_console<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    security: &SecuritySettings,
) -> axum::Router<S> {
    if security.auth_token.is_none() {
        return router;
    }
    let guard = HttpGuard {
        gate: Gate::new(security.auth_token.clone(), 0),
        allowed_origins: security.console_origins.clone(),
        paths: CONSOLE_PATHS,
    };
    router.layer(axum::middleware::from_fn_with_state(guard, http_guard))
}

pub async fn http_guard(
    axum::extract::State(guard): axum::extract::State<HttpGuard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !guard.paths.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let authority = request.uri().authority().map(http::uri::Authority::as_str);
    if let Err(reason) = check_origin(
        request.headers(),
        authority,
        &guard.allowed_origins,
        guard.gate.requires_token(),
    ) {
        tracing::warn!(%reason, "HTTP request refused: origin");
        return (http::StatusCode::FORBIDDEN, reason).into_response();
    }
    if guard.gate.requires_token() {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let result = match header {
            Some(value) => guard.gate.check_authorization(Some(value)),
            None => match query_token(request.uri().query()) {
                Some(token) => guard.gate.check_token(token.as_bytes()),
                None => Err(Refusal::MissingToken),
            },
        };
        if let Err(refusal) = result {
            tracing::warn!(reason = refusal.as_str(), "HTTP request refused");
            let code = match refusal {
                Refusal::WrongToken => http::StatusCode::FORBIDDEN,
                Refusal::MissingToken | Refusal::MalformedToken => http::StatusCode::UNAUTHORIZED,
            };
            return (code, refusal.status().message().to_string()).into_response();
        }
    }
    next.run(request).await
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token").then(|| percent_decode(value))
    })
}

/// Tokens are printable ASCII; a browser may still percent-encode some.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cross-site page must not drive the console's WebSocket with its
/// visitor's browser. When a request carries an Origin (browsers always send
/// one), either the Origin is one of `allowed` (`--console-origins`,
/// normalised by `config::parse_origins`), or all of these hold:
/// - it is `http://` and its host is the Host served (or the URI's
///   authority, HTTP/2): this port serves plain HTTP, so an `https://` page
///   is another origin (behind a TLS proxy, list the public origin);
/// - when no token is required (`token_required` false), that host is an IP
///   literal or `localhost`: a page can rebind its own DNS name to this
///   address, and then its Origin and Host agree (DNS rebinding). With a
///   token such a page still holds no token.
///
/// The one origin rule of the side port: the WebSocket upgrade, the token
/// guard and the `/v1` guard all call it.
pub fn check_origin(
    headers: &http::HeaderMap,
    authority: Option<&str>,
    allowed: &[String],
    token_required: bool,
) -> Result<(), String> {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        // Not a browser; the token check, when on, is what stands.
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "the Origin header is not text".to_string())?;
    let normalised = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.contains(&normalised) {
        return Ok(());
    }
    let (scheme, origin_host) = normalised
        .split_once("://")
        .ok_or_else(|| format!("Origin {origin} is not a web origin: refused"))?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority);
    let host = match host {
        Some(host) if host.eq_ignore_ascii_case(origin_host) => host,
        _ => {
            return Err(format!(
                "Origin {origin} is not this host ({}) nor in --console-origins: \
                 cross-origin console connections are refused",
                host.unwrap_or("no Host header")
            ))
        }
    };
    if scheme != "http" {
        return Err(format!(
            "Origin {origin} is not http://{host}, the origin this port serves: refused \
             (behind a TLS proxy, add {normalised} to --console-origins)"
        ));
    }
    if !token_required && !is_address_literal(host) {
        return Err(format!(
            "Host {host} is a name and no token is set, so a page that points its own \
             name at this address would pass as same-origin (DNS rebinding): refused. \
             Add http://{host} to --console-origins, set --auth-token, or browse to \
             an IP address or localhost"
        ));
    }
    Ok(())
}

/// Whether a Host value (with or without a port) names no DNS name a page
/// could rebind: an IP literal, `localhost` or a `.localhost` name (which
/// browsers resolve to loopback themselves).
fn is_address_literal(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(token: &str) -> Arc<Gate> {
        Gate::new(Some(Secret::new(token).expect("valid")), 0)
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        let gate = gate("abc");
        assert_eq!(gate.check_authorization(Some(b"Bearer abc")), Ok(()));
        assert_eq!(gate.check_authorization(Some(b"bearer   abc ")), Ok(()));
        assert_eq!(gate.check_authorization(None), Err(Refusal::MissingToken));
        for malformed in [&b"abc"[..], b"Basic abc", b"Bearerabc", b"Bearer", b""] {
            assert_eq!(
                gate.check_authorization(Some(malformed)),
                Err(Refusal::MalformedToken),
                "{malformed:?}"
            );
        }
        for wrong in [
            &b"Bearer abd"[..],
            b"Bearer ab",
            b"Bearer abcd",
            b"Bearer ABC",
        ] {
            assert_eq!(
                gate.check_authorization(Some(wrong)),
                Err(Refusal::WrongToken),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn no_token_configured_admits_everyone() {
        let gate = Gate::new(None, 0);
        assert_eq!(gate.check_authorization(None), Ok(()));
        assert!(!gate.requires_token());
    }

    #[test]
    fn the_per_client_limit_counts_open_calls_and_releases_them() {
        let gate = Gate::new(None, 2);
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let other: IpAddr = "10.1.2.4".parse().expect("ip");
        let a = gate.admit(Some(ip)).expect("first");
        let _b = gate.admit(Some(ip)).expect("second");
        let refused = gate.admit(Some(ip)).expect_err("third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("limit"));
        let _c = gate.admit(Some(other)).expect("another client");
        drop(a);
        assert_eq!(gate.open_from(ip), 1);
        let _d = gate.admit(Some(ip)).expect("room again");
    }

    #[test]
    fn origins_must_match_the_host_or_be_listed() {
        let headers = |host: &str, origin: Option<&str>| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::HOST, host.parse().expect("host"));
            if let Some(origin) = origin {
                h.insert(http::header::ORIGIN, origin.parse().expect("origin"));
            }
            h
        };
        let here = "127.0.0.1:8080";
        for token in [false, true] {
            assert!(check_origin(&headers(here, None), None, &[], token).is_ok());
            let same = headers(here, Some("http://127.0.0.1:8080"));
            assert!(check_origin(&same, None, &[], token).is_ok());
            let evil = headers(here, Some("http://evil.example"));
            assert!(check_origin(&evil, None, &[], token).is_err());
            let other_port = headers(here, Some("http://127.0.0.1:9999"));
            assert!(check_origin(&other_port, None, &[], token).is_err());
        }
        // Behind a proxy that rewrites Host, the public origin must be listed.
        let allowed = ["https://voice.example.com".to_string()];
        let proxied = headers(here, Some("https://Voice.example.com"));
        assert!(check_origin(&proxied, None, &[], false).is_err());
        assert!(check_origin(&proxied, None, &allowed, false).is_ok());
        let lookalike = headers(here, Some("https://voice.example.com.evil.example"));
        assert!(check_origin(&lookalike, None, &allowed, false).is_err());
        // HTTP/2 carries the authority in the URI, not in Host.
        let mut h2 = http::HeaderMap::new();
        h2.insert(
            http::header::ORIGIN,
            "http://127.0.0.1:8080".parse().expect("origin"),
        );
        assert!(check_origin(&h2, Some(here), &[], false).is_ok());
        assert!(check_origin(&h2, None, &[], false).is_err());
    }

    /// Regression: the scheme was ignored, so a page served over https (or
    /// any other scheme) on the same host name passed as same-origin.
    #[test]
    fn an_origin_of_another_scheme_is_another_origin() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, "127.0.0.1:8080".parse().expect("host"));
        for origin in ["https://127.0.0.1:8080", "ws://127.0.0.1:8080", "null"] {
            h.insert(http::header::ORIGIN, origin.parse().expect("origin"));
            assert!(check_origin(&h, None, &[], true).is_err(), "{origin}");
        }
        let listed = ["https://127.0.0.1:8080".to_string()];
        h.insert(
            http::header::ORIGIN,
            "https://127.0.0.1:8080".parse().expect("origin"),
        );
        assert!(check_origin(&h, None, &listed, false).is_ok());
    }

    /// Regression: with no token, a page whose DNS name was rebound to the
    /// orchestrator's address passed the check (its Origin and Host agree).
    #[test]
    fn a_host_name_needs_a_token_or_a_listing_against_dns_rebinding() {
        let request = |host: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::HOST, host.parse().expect("host"));
            let origin = format!("http://{host}");
            h.insert(http::header::ORIGIN, origin.parse().expect("origin"));
            h
        };
        let rebound = request("attacker.example:8080");
        let refused = check_origin(&rebound, None, &[], false).expect_err("rebinding");
        assert!(refused.contains("--console-origins"), "{refused}");
        assert!(check_origin(&rebound, None, &[], true).is_ok());
        let listed = ["http://attacker.example:8080".to_string()];
        assert!(check_origin(&rebound, None, &listed, false).is_ok());
        for literal in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "LocalHost",
            "console.localhost:8080",
        ] {
            assert!(
                check_origin(&request(literal), None, &[], false).is_ok(),
                "{literal}"
            );
        }
        assert!(check_origin(&request("localhost.example:8080"), None, &[], false).is_err());
    }

    #[test]
    fn the_query_token_is_found_and_decoded() {
        assert_eq!(
            query_token(Some("a=1&access_token=x%2By")).as_deref(),
            Some("x+y")
        );
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
