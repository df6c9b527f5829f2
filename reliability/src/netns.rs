//! A network namespace made by the test: a veth pair joins it to the host,
//! `10.77.N.1` on the host side and `10.77.N.2` inside. Cutting the link
//! (`ip link set <host side> down`) partitions whatever runs inside from
//! the orchestrator outside; restoring it heals the partition.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Result};

pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Io("running ip (iproute2)".into(), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Why namespaces cannot be made here, if they cannot: they need root and iproute2.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("iproute2 (`ip`) is not installed".into()),
    }
}

impl Netns {
    /// Makes a namespace and its link, up.
    pub fn create() -> Result<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 10_000;
        // Third octet from the pid and counter: parallel test runs do not collide.
        let octet = (id * 7 + n) % 250 + 2;
        let name = format!("vxrel{id}-{n}");
        let host_if = format!("vxh{id}x{n}");
        let ns_if = format!("vxn{id}x{n}");
        let host_ip = format!("10.77.{octet}.1");
        let ns_ip = format!("10.77.{octet}.2");
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let netns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if])?;
        inside(&["link", "set", &ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Cuts the link: nothing crosses until [`Netns::restore`].
    pub fn cut(&self) -> Result<()> {
        ip(&["link", "set", &self.host_if, "down"])
    }

    pub fn restore(&self) -> Result<()> {
        ip(&["link", "set", &self.host_if, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
