//! Where pool members come from: static targets, `dns://` names resolved
//! again periodically, and workers that register with a lease.

use std::collections::{BTreeSet, HashMap};
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
    #[error("address {0:?} is not HOST:PORT")]
    Address(String),
}

/// Leases of workers that announced themselves: an address stays in its
/// pool while its lease is renewed, and is dropped when it runs out.
pub struct Registry {
    tts: Arc<Pool>,
    stt: Arc<Pool>,
    max_lease: Duration,
    leases: Mutex<HashMap<(Kind, String), Instant>>,
    renewed: Notify,
}

/// Lease granted when a worker asks for none.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl Registry {
    pub fn new(tts: Arc<Pool>, stt: Arc<Pool>, max_lease: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            tts,
            stt,
            max_lease,
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
        let valid_address = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid_address {
            return Err(RegisterError::Address(address.to_string()));
        }
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
        let registry = Registry::new(Arc::clone(&tts), Arc::clone(&stt), Duration::from_secs(10));
        assert_eq!(
            registry.register("video", "h:1", 5),
            Err(RegisterError::Kind("video".into()))
        );
        for bad in ["nohost", ":80", "h:0", "h:x"] {
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
