//! A pool of endpoints of one kind: membership (the union of what each
//! discovery source reports) and selection (power of two choices by load).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::EndpointSettings;
use crate::endpoint::{Endpoint, EndpointSnapshot, EndpointState, Kind};
use crate::metrics::Metrics;

#[derive(Debug, Clone, thiserror::Error)]
#[error("no {kind} worker ready within {waited:?} (tried: {tried}; known: {known})")]
pub struct NoWorker {
    pub kind: &'static str,
    pub waited: Duration,
    pub tried: String,
    pub known: String,
    /// Some endpoint was SERVING but had no room: the pool is full, not down.
    pub saturated: bool,
}

impl From<NoWorker> for tonic::Status {
    /// A full pool is RESOURCE_EXHAUSTED (the capacity rules' code, and what
    /// a worker itself would answer); a pool with nothing SERVING is
    /// UNAVAILABLE.
    fn from(error: NoWorker) -> Self {
        if error.saturated {
            tonic::Status::resource_exhausted(error.to_string())
        } else {
            tonic::Status::unavailable(error.to_string())
        }
    }
}

struct Member {
    endpoint: Arc<Endpoint>,
    monitor: JoinHandle<()>,
}

#[derive(Default)]
struct Membership {
    /// Addresses by discovery source ("static", "dns://...", "registry").
    sources: HashMap<String, BTreeSet<String>>,
    members: HashMap<String, Member>,
}

pub struct Pool {
    pub kind: Kind,
    settings: EndpointSettings,
    membership: Mutex<Membership>,
    changed: Arc<watch::Sender<u64>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One turn's claim on an endpoint: counted in its in-flight load until dropped.
pub struct Lease {
    pub endpoint: Arc<Endpoint>,
    pub channel: Channel,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.end_turn();
    }
}

impl Pool {
    pub fn new(kind: Kind, settings: EndpointSettings, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            kind,
            settings,
            membership: Mutex::new(Membership::default()),
            changed: Arc::new(watch::channel(0).0),
            metrics,
        })
    }

    /// Replaces what `source` says the pool holds: endpoints no source names
    /// any more are dropped (their monitors stop), new ones start connecting.
    pub fn set_source(&self, source: &str, addresses: BTreeSet<String>) {
        let mut membership = lock(&self.membership);
        if membership.sources.get(source) == Some(&addresses) {
            return;
        }
        membership.sources.insert(source.to_string(), addresses);
        let wanted: BTreeSet<String> = membership.sources.values().flatten().cloned().collect();
        let gone: Vec<String> = membership
            .members
            .keys()
            .filter(|address| !wanted.contains(*address))
            .cloned()
            .collect();
        for address in gone {
            if let Some(member) = membership.members.remove(&address) {
                member.monitor.abort();
                tracing::info!(endpoint = %address, kind = self.kind.as_str(), "worker removed");
            }
        }
        for address in wanted {
            if membership.members.contains_key(&address) {
                continue;
            }
            let endpoint = Endpoint::new(
                address.clone(),
                self.kind,
                &self.settings,
                Arc::clone(&self.changed),
                Arc::clone(&self.metrics),
            );
            let monitor = tokio::spawn(Arc::clone(&endpoint).monitor(self.settings.clone()));
            tracing::info!(endpoint = %address, kind = self.kind.as_str(), "worker added");
            membership
                .members
                .insert(address, Member { endpoint, monitor });
        }
        drop(membership);
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<_> = lock(&self.membership)
            .members
            .values()
            .map(|m| Arc::clone(&m.endpoint))
            .collect();
        all.sort_by(|a, b| a.address.cmp(&b.address));
        all
    }

    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.endpoints().iter().map(|e| e.snapshot()).collect()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.membership).members.is_empty()
    }

    /// Whether an endpoint other than `address` is SERVING and connected:
    /// somewhere an attempt abandoned on `address` could go.
    pub fn has_alternative(&self, address: &str) -> bool {
        self.endpoints().iter().any(|e| {
            e.address != address && e.state() == EndpointState::Serving && e.channel().is_some()
        })
    }

    /// The first-answer p95 of `endpoint`, or, before it has one, the
    /// highest of the pool's other endpoints: what a worker of this pool
    /// normally takes. `None` while no turn anywhere got a first answer.
    pub fn first_answer_p95(&self, endpoint: &Endpoint) -> Option<std::time::Duration> {
        endpoint.first_answer_p95().or_else(|| {
            self.endpoints()
                .iter()
                .filter_map(|e| e.first_answer_p95())
                .max()
        })
    }

    pub fn any_serving(&self) -> bool {
        self.endpoints()
            .iter()
            .any(|e| e.state() == EndpointState::Serving)
    }

    /// Resolves on any change in membership, readiness, load or capacity.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Claims a dispatchable endpoint: `preferred` when it is one and not in
    /// `tried` (session affinity), else power of two choices among the
    /// untried, else among all. Waits up to `wait` for one to become ready.
    pub async fn acquire(
        &self,
        preferred: Option<&str>,
        tried: &[String],
        wait: Duration,
    ) -> Result<Lease, NoWorker> {
        self.wait_for(tried, wait, || self.try_acquire(preferred, tried))
            .await
    }

    /// Like [`Pool::acquire`], for opening a session: a worker reporting
    /// itself full is not skipped, so that it answers RESOURCE_EXHAUSTED at
    /// once (TTS-CAPACITY) instead of the caller waiting for room.
    pub async fn acquire_ignoring_load(
        &self,
        tried: &[String],
        wait: Duration,
    ) -> Result<Lease, NoWorker> {
        self.wait_for(tried, wait, || self.try_acquire_with(None, tried, true))
            .await
    }

    /// A channel to some dispatchable endpoint, for calls that are not turns
    /// (ListModels, GetCapabilities...): not counted as load.
    pub async fn any_channel(&self, wait: Duration) -> Result<Channel, NoWorker> {
        self.wait_for(&[], wait, || {
            self.endpoints()
                .into_iter()
                .filter(|e| e.is_dispatchable())
                .find_map(|e| e.channel())
        })
        .await
    }

    /// Retries `pick` on every pool change until it gives something or
    /// `wait` passes: a watch, never a polling sleep.
    async fn wait_for<T>(
        &self,
        tried: &[String],
        wait: Duration,
        pick: impl Fn() -> Option<T>,
    ) -> Result<T, NoWorker> {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            if let Some(found) = pick() {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Deadline passed (or the pool is gone): report what there was.
                _ => {
                    return Err(NoWorker {
                        kind: self.kind.as_str(),
                        waited: wait,
                        tried: if tried.is_empty() {
                            "none".to_string()
                        } else {
                            tried.join(", ")
                        },
                        known: self.describe(),
                        saturated: self
                            .snapshot()
                            .iter()
                            .any(|e| e.state == EndpointState::Serving),
                    })
                }
            }
        }
    }

    pub fn endpoint(&self, address: &str) -> Option<Arc<Endpoint>> {
        lock(&self.membership)
            .members
            .get(address)
            .map(|m| Arc::clone(&m.endpoint))
    }

    fn describe(&self) -> String {
        let all = self.snapshot();
        if all.is_empty() {
            return "no endpoints".to_string();
        }
        all.iter()
            .map(|e| format!("{} {}", e.address, e.state.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn try_acquire(&self, preferred: Option<&str>, tried: &[String]) -> Option<Lease> {
        self.try_acquire_with(preferred, tried, false)
    }

    fn try_acquire_with(
        &self,
        preferred: Option<&str>,
        tried: &[String],
        ignore_load: bool,
    ) -> Option<Lease> {
        let ready: Vec<Arc<Endpoint>> = self
            .endpoints()
            .into_iter()
            .filter(|e| {
                if ignore_load {
                    e.accepts_bound_session()
                } else {
                    e.is_dispatchable()
                }
            })
            .collect();
        let untried: Vec<Arc<Endpoint>> = ready
            .iter()
            .filter(|e| !tried.contains(&e.address))
            .cloned()
            .collect();
        let chosen = preferred
            .filter(|p| !tried.iter().any(|t| t == p))
            .and_then(|p| self.endpoint(p))
            .filter(|e| e.accepts_bound_session())
            .or_else(|| two_choices(&untried))
            .or_else(|| two_choices(&ready))?;
        let channel = chosen.channel()?;
        chosen.begin_turn();
        Some(Lease {
            endpoint: chosen,
            channel,
        })
    }
}

/// Power of two choices: two distinct endpoints at random, the less loaded wins.
fn two_choices(candidates: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
    match candidates.len() {
        0 => None,
        1 => candidates.first().cloned(),
        n => {
            let a = rand::random_range(0..n);
            let b = (a + 1 + rand::random_range(0..n - 1)) % n;
            let (first, second) = (&candidates[a], &candidates[b]);
            Some(Arc::clone(if second.score() < first.score() {
                second
            } else {
                first
            }))
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for member in lock(&self.membership).members.values() {
            member.monitor.abort();
        }
    }
}
