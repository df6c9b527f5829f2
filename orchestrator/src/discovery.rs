//! Where pool members come from: static targets, `dns://` names resolved
//! again periodically, and workers that register with a lease.
//!
//! Registration is a way into the pools, so it is guarded apart from the
//! client API (its own token, see `server.rs`) and every registered address
//! must be an IP literal inside [`AddressPolicy`]'s allow-list, checked
//! before the address joins a pool (and so before anything dials it).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Target;
use crate::endpoint::Kind;
use crate::pool::Pool;

/// Adds the static targets and starts one resolver task per dns:// target.
pub fn start(pool: &Arc<Pool>, targets: &[Target], refresh: Duration) -> Vec<JoinHandle<()>> {
    let statics: BTreeSet<String> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Static(address) => Some(address.clone()),
            Target::Dns { .. } => None,
        })
        .collect();
    pool.set_source("static", statics);
    targets
        .iter()
        .filter_map(|t| match t {
            Target::Dns { host, port } => Some(tokio::spawn(resolve_loop(
                Arc::clone(pool),
                host.clone(),
                *port,
                refresh,
            ))),
            Target::Static(_) => None,
        })
        .collect()
}

/// One endpoint per address NAME resolves to. A failed lookup keeps the
/// last answer: a DNS hiccup must not empty the pool.
async fn resolve_loop(pool: Arc<Pool>, host: String, port: u16, refresh: Duration) {
    let source = format!("dns://{host}:{port}");
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addresses) => {
                let found: BTreeSet<String> = addresses.map(|a| a.to_string()).collect();
                pool.set_source(&source, found);
            }
            Err(error) => tracing::warn!(%source, %error, "DNS lookup failed"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("kind {0:?} is neither \"tts\" nor \"stt\"")]
    Kind(String),
    #[error("address {0:?} is not IP:PORT (host names are refused: the allow-list must hold for the address dialled)")]
    Address(String),
    #[error("address {0} is not allowed: {1}")]
    NotAllowed(String, &'static str),
}

impl RegisterError {
    pub fn to_status(&self) -> tonic::Status {
        match self {
            RegisterError::Kind(_) | RegisterError::Address(_) => {
                tonic::Status::invalid_argument(self.to_string())
            }
            RegisterError::NotAllowed(..) => tonic::Status::permission_denied(self.to_string()),
        }
    }
}

/// An IP network, `ADDRESS/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR (ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError(pub String);

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(text.to_string());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| bad())?,
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// True when every address of `self` lies inside `other`.
    fn within(&self, other: &Cidr) -> bool {
        self.prefix >= other.prefix && other.contains(self.network)
    }
}

/// Parses a comma-separated list of CIDRs (a bare address is a /32 or /128).
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, CidrError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::parse)
        .collect()
}

/// The default `--registry-allow`: loopback and the private ranges, where
/// workers of one cluster live.
pub const DEFAULT_REGISTRY_ALLOW: &str =
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

/// Addresses no worker has: link-local (where cloud metadata services
/// answer), the metadata addresses outside it, unspecified, broadcast and
/// multicast. Refused even inside a wide allow-list entry such as
/// `0.0.0.0/0`; only an entry lying inside one of them lets it through.
const REFUSED: &[(Cidr, &str)] = &[
    (Cidr::v4(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (Cidr::v4(100, 100, 100, 200, 32), "a cloud metadata address"),
    (
        Cidr::v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254], 128),
        "a cloud metadata address",
    ),
    (Cidr::v4(0, 0, 0, 0, 8), "unspecified"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (Cidr::v4(255, 255, 255, 255, 32), "broadcast"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Which registered addresses may join a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy {
            // The constant parses: pinned by a unit test.
            allow: parse_cidrs(DEFAULT_REGISTRY_ALLOW).unwrap_or_default(),
        }
    }
}

impl AddressPolicy {
    pub fn new(allow: Vec<Cidr>) -> AddressPolicy {
        AddressPolicy { allow }
    }

    /// Parses `IP:PORT` (`[IPv6]:PORT`) and checks it against the policy.
    pub fn check(&self, address: &str) -> Result<SocketAddr, RegisterError> {
        let parsed: SocketAddr = address
            .parse()
            .map_err(|_| RegisterError::Address(address.to_string()))?;
        if parsed.port() == 0 {
            return Err(RegisterError::Address(address.to_string()));
        }
        // ::ffff:169.254.169.254 is 169.254.169.254 to the network.
        let ip = match parsed.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let allowing: Vec<&Cidr> = self.allow.iter().filter(|c| c.contains(ip)).collect();
        if allowing.is_empty() {
            return Err(RegisterError::NotAllowed(
                address.to_string(),
                "outside --registry-allow",
            ));
        }
        for (range, what) in REFUSED {
            if range.contains(ip) && !allowing.iter().any(|c| c.within(range)) {
                return Err(RegisterError::NotAllowed(address.to_string(), what));
            }
        }
        Ok(parsed)
    }
}

/// Leases of workers that announced themselves: an address stays in its
/// pool while its lease is renewed, and is dropped when it runs out.
pub struct Registry {
    tts: Arc<Pool>,
    stt: Arc<Pool>,
    max_lease: Duration,
    policy: AddressPolicy,
    leases: Mutex<HashMap<(Kind, String), Instant>>,
    renewed: Notify,
}

/// Lease granted when a worker asks for none.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Registry {
    pub fn new(
        tts: Arc<Pool>,
        stt: Arc<Pool>,
        max_lease: Duration,
        policy: AddressPolicy,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            tts,
            stt,
            max_lease,
            policy,
            leases: Mutex::new(HashMap::new()),
            renewed: Notify::new(),
        })
    }

    /// Grants or renews a lease; returns its length.
    pub fn register(
        &self,
        kind: &str,
        address: &str,
        requested_seconds: u32,
    ) -> Result<Duration, RegisterError> {
        let kind = Kind::parse(kind).ok_or_else(|| RegisterError::Kind(kind.to_string()))?;
        // The canonical form keys the lease, so "[::1]:9" and "[0::1]:9" are one worker.
        let address = self.policy.check(address)?.to_string();
        let address = address.as_str();
        let lease = if requested_seconds == 0 {
            DEFAULT_LEASE
        } else {
            Duration::from_secs(u64::from(requested_seconds))
        }
        .min(self.max_lease);
        let is_new = self
            .lock()
            .insert((kind, address.to_string()), Instant::now() + lease)
            .is_none();
        if is_new {
            tracing::info!(kind = kind.as_str(), %address, ?lease, "worker registered");
            self.publish(kind);
        }
        self.renewed.notify_one();
        Ok(lease)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), Instant>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, kind: Kind) {
        let addresses: BTreeSet<String> = self
            .lock()
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, a)| a.clone())
            .collect();
        let pool = match kind {
            Kind::Tts => &self.tts,
            Kind::Stt => &self.stt,
        };
        pool.set_source("registry", addresses);
    }

    /// Drops expired leases, waking at the earliest expiry (or a new lease).
    pub async fn expire_loop(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let expired: Vec<(Kind, String)> = {
                let mut leases = self.lock();
                let expired: Vec<_> = leases
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in &expired {
                    leases.remove(key);
                }
                expired
            };
            for (kind, address) in &expired {
                tracing::warn!(kind = kind.as_str(), %address, "lease expired");
            }
            for kind in [Kind::Tts, Kind::Stt] {
                if expired.iter().any(|(k, _)| *k == kind) {
                    self.publish(kind);
                }
            }
            let next = self.lock().values().min().copied();
            match next {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = self.renewed.notified() => {}
                    }
                }
                None => self.renewed.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Args, Settings};
    use crate::metrics::Metrics;

    fn pools() -> (Arc<Pool>, Arc<Pool>) {
        let settings = Settings::from_args(&Args::for_tests()).expect("settings");
        let metrics = Arc::new(Metrics::default());
        (
            Pool::new(Kind::Tts, settings.endpoint.clone(), Arc::clone(&metrics)),
            Pool::new(Kind::Stt, settings.endpoint, metrics),
        )
    }

    #[tokio::test]
    async fn register_validates_caps_and_adds_to_the_right_pool() {
        let (tts, stt) = pools();
        let registry = Registry::new(
            Arc::clone(&tts),
            Arc::clone(&stt),
            Duration::from_secs(10),
            AddressPolicy::default(),
        );
        assert_eq!(
            registry.register("video", "h:1", 5),
            Err(RegisterError::Kind("video".into()))
        );
        for bad in [
            "nohost",
            ":80",
            "h:0",
            "h:x",
            "worker.svc:50061",
            "127.0.0.1:0",
        ] {
            assert!(matches!(
                registry.register("tts", bad, 5),
                Err(RegisterError::Address(_))
            ));
        }
        assert_eq!(
            registry.register("stt", "127.0.0.1:9", 600),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            registry.register("stt", "127.0.0.1:9", 0),
            Ok(Duration::from_secs(10).min(DEFAULT_LEASE))
        );
        assert!(tts.is_empty());
        assert_eq!(stt.snapshot().len(), 1);
    }

    /// Regression (issue 22, High 1): a registration of the cloud metadata
    /// address was accepted and dialled.
    #[test]
    fn link_local_and_metadata_addresses_are_refused_even_inside_a_wide_allow_list() {
        let wide = AddressPolicy::new(parse_cidrs("0.0.0.0/0,::/0").expect("cidrs"));
        for policy in [AddressPolicy::default(), wide.clone()] {
            for refused in [
                "169.254.169.254:80",
                "[fe80::1]:50061",
                "100.100.100.200:80",
                "[fd00:ec2::254]:80",
                "[::ffff:169.254.169.254]:80",
                "0.0.0.0:50061",
                "224.0.0.1:50061",
            ] {
                assert!(
                    matches!(policy.check(refused), Err(RegisterError::NotAllowed(..))),
                    "{refused} accepted by {policy:?}"
                );
            }
        }
        assert!(wide.check("203.0.113.7:50061").is_ok());
        // Named on purpose, a link-local range is allowed.
        let named = AddressPolicy::new(parse_cidrs("169.254.10.0/24").expect("cidrs"));
        assert!(named.check("169.254.10.3:50061").is_ok());
        assert!(named.check("169.254.169.254:80").is_err());
    }

    #[test]
    fn the_default_allow_list_is_loopback_and_private_ranges() {
        let policy = AddressPolicy::default();
        assert_eq!(policy.allow.len(), 6, "the default list parses");
        for allowed in [
            "127.0.0.1:1",
            "[::1]:1",
            "10.2.3.4:1",
            "172.31.0.1:1",
            "192.168.1.1:1",
            "[fd12::1]:1",
        ] {
            assert!(policy.check(allowed).is_ok(), "{allowed}");
        }
        for outside in ["203.0.113.7:50061", "172.32.0.1:1", "[2001:db8::1]:1"] {
            assert!(
                matches!(
                    policy.check(outside),
                    Err(RegisterError::NotAllowed(_, "outside --registry-allow"))
                ),
                "{outside}"
            );
        }
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("10.0.0/8").is_err());
        assert_eq!(
            parse_cidrs(" 10.0.0.1 ,").expect("bare")[0].to_string(),
            "10.0.0.1/32"
        );
    }

    #[tokio::test]
    async fn static_targets_join_the_pool() {
        let (tts, _stt) = pools();
        let targets = [
            Target::Static("127.0.0.1:9".into()),
            Target::Static("127.0.0.1:10".into()),
        ];
        let tasks = start(&tts, &targets, Duration::from_secs(1));
        assert!(tasks.is_empty(), "no resolver for static targets");
        let addresses: Vec<String> = tts.snapshot().into_iter().map(|e| e.address).collect();
        assert_eq!(addresses, vec!["127.0.0.1:10", "127.0.0.1:9"]);
        tts.set_source("static", BTreeSet::new());
        assert!(tts.is_empty(), "endpoints no source names are dropped");
    }
}
