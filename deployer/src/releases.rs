//! Releases: one container per deploy, `APP-<n>`, numbered upwards.
//!
//! Two fixed slots meant the next deploy had to delete the container it was
//! about to replace, which was also the only rollback target; a deploy that
//! then failed left nothing to go back to. With one container per release the
//! previous good release is never touched before a new one is live and
//! watched, and the last `--keep N` stopped releases stay for
//! `handoff rollback --to`.
//!
//! Docker labels are fixed at creation, so they carry only what never
//! changes (app, release number, image, digest, time, ports). The role of a
//! release (live, draining, kept, failed) is derived when it is read: live
//! and draining from the proxy's own view, failed from the container's name
//! (`APP-<n>-failed`, set by a rename when a release is refused or switched
//! back from), which `docker ps` also shows to a person.
//!
//! The live release is decided by matching the proxy's backend address
//! against each container's pinned 127.0.0.1 port, so it is found even
//! when that container is stopped, dead or restarting.

use handoff_shared::StatusResponse;
use std::collections::HashMap;

pub const LABEL_APP: &str = "handoff.app";
pub const LABEL_RELEASE: &str = "handoff.release";
/// Only on containers made by the blue/green versions of handoff.
pub const LABEL_SLOT: &str = "handoff.slot";
pub const LABEL_IMAGE: &str = "handoff.image";
pub const LABEL_DIGEST: &str = "handoff.digest";
pub const LABEL_CONTAINER_PORT: &str = "handoff.container-port";
pub const LABEL_HEALTH_PORT: &str = "handoff.health-port";
pub const LABEL_HEALTH_PATH: &str = "handoff.health-path";
pub const LABEL_DEPLOYED_AT: &str = "handoff.deployed-at";

/// The name suffix of a release that was refused or switched back from.
pub const FAILED_SUFFIX: &str = "-failed";

pub fn container_name(app: &str, release: u64) -> String {
    format!("{app}-{release}")
}

/// What handoff needs to know about one release's container.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// Docker's state word: created, running, restarting, exited, dead, ...
    pub status: String,
    pub running: bool,
    pub restarting: bool,
    pub restart_count: i64,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Container port → `127.0.0.1:HOSTPORT`, only while running.
    pub ports: HashMap<u16, String>,
    /// Container port → host port it asks for explicitly, even while stopped.
    pub pinned: HashMap<u16, u16>,
    /// It once passed the readiness rule (its restart policy is no longer
    /// the trial's `no`). A release whose deploy was killed before that is
    /// never a default rollback target.
    pub proven: bool,
}

impl ContainerInfo {
    /// The release number: the label, or for a migrated blue/green
    /// container the number in its new name.
    pub fn release(&self) -> Option<u64> {
        if let Some(n) = self.labels.get(LABEL_RELEASE).and_then(|n| n.parse().ok()) {
            return Some(n);
        }
        let app = self.labels.get(LABEL_APP)?;
        let rest = self.name.strip_prefix(app.as_str())?.strip_prefix('-')?;
        rest.strip_suffix(FAILED_SUFFIX)
            .unwrap_or(rest)
            .parse()
            .ok()
    }

    pub fn failed(&self) -> bool {
        self.name.ends_with(FAILED_SUFFIX)
    }

    pub fn image(&self) -> &str {
        self.labels.get(LABEL_IMAGE).map_or("?", String::as_str)
    }

    pub fn digest(&self) -> Option<&str> {
        self.labels.get(LABEL_DIGEST).map(String::as_str)
    }

    fn port_label(&self, key: &str) -> Option<u16> {
        self.labels.get(key).and_then(|p| p.parse().ok())
    }

    pub fn container_port(&self) -> Option<u16> {
        self.port_label(LABEL_CONTAINER_PORT)
    }

    pub fn health_port(&self) -> Option<u16> {
        self.port_label(LABEL_HEALTH_PORT)
            .or_else(|| self.container_port())
    }

    pub fn health_path(&self) -> &str {
        self.labels
            .get(LABEL_HEALTH_PATH)
            .map_or("/health", String::as_str)
    }

    /// The address the proxy uses for this release: the app port on
    /// 127.0.0.1, as published now or, when stopped, as pinned.
    pub fn backend(&self) -> Option<String> {
        let port = self.container_port()?;
        if let Some(addr) = self.ports.get(&port) {
            return Some(addr.clone());
        }
        self.pinned
            .get(&port)
            .filter(|p| **p != 0)
            .map(|p| format!("127.0.0.1:{p}"))
    }

    pub fn health_addr(&self) -> Option<&str> {
        self.health_port()
            .and_then(|p| self.ports.get(&p))
            .map(String::as_str)
    }

    /// Docker's state with the exit code when it has one that matters.
    pub fn state_text(&self) -> String {
        match (self.running, self.exit_code) {
            (false, Some(code)) if self.status == "exited" || self.status == "dead" => {
                format!("{} ({code})", self.status)
            }
            _ if self.restart_count > 0 => {
                format!("{} (restarted {}x)", self.status, self.restart_count)
            }
            _ => self.status.clone(),
        }
    }
}

/// An app's releases, newest first, plus what the proxy says about them.
#[derive(Debug, Clone, Default)]
pub struct Releases {
    pub list: Vec<ContainerInfo>,
    /// The proxy's current backend.
    pub backend: Option<String>,
    /// Backends the proxy still drains.
    pub draining: Vec<String>,
}

impl Releases {
    pub fn new(mut list: Vec<ContainerInfo>, status: Option<&StatusResponse>) -> Releases {
        list.retain(|c| c.release().is_some());
        list.sort_by_key(|c| std::cmp::Reverse(c.release()));
        Releases {
            list,
            backend: status.and_then(|s| s.backend.clone()),
            draining: status
                .map(|s| s.draining.iter().map(|d| d.backend.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// The release the proxy routes to, whatever its container's state.
    pub fn live(&self) -> Option<&ContainerInfo> {
        let backend = self.backend.as_deref()?;
        let mut at = self
            .list
            .iter()
            .filter(|c| c.backend().as_deref() == Some(backend));
        // With --host-ports, stopped releases share the live one's port:
        // the running one is live; otherwise the newest.
        at.clone()
            .find(|c| c.running || c.restarting)
            .or_else(|| at.next())
    }

    /// True when the proxy routes to or still drains this release: such a
    /// container must never be removed or stopped by anything but a drain.
    pub fn in_use(&self, c: &ContainerInfo) -> bool {
        c.backend().is_some_and(|b| {
            self.backend.as_deref() == Some(b.as_str()) || self.draining.contains(&b)
        })
    }

    pub fn next_number(&self) -> u64 {
        self.list
            .iter()
            .filter_map(ContainerInfo::release)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The default rollback target: the newest release that is not live and
    /// never failed.
    pub fn previous_good(&self) -> Option<&ContainerInfo> {
        let live = self.live().map(|c| c.id.clone());
        self.list
            .iter()
            .find(|c| c.proven && !c.failed() && Some(&c.id) != live.as_ref())
    }

    /// `--to`: a release number, a container name, an image reference or a
    /// digest.
    pub fn find(&self, to: &str) -> Option<&ContainerInfo> {
        let by_number = to.parse::<u64>().ok();
        self.list
            .iter()
            .filter(|c| !c.failed())
            .find(|c| by_number.is_some() && c.release() == by_number)
            .or_else(|| self.list.iter().find(|c| c.name == to))
            .or_else(|| {
                self.list.iter().filter(|c| !c.failed()).find(|c| {
                    c.image() == to
                        || c.digest()
                            .is_some_and(|d| d == to || d.ends_with(&format!("@{to}")))
                })
            })
    }

    /// The role of a release, for `releases` and `status`.
    pub fn role(&self, c: &ContainerInfo) -> &'static str {
        let backend = c.backend();
        if backend.is_some() && backend == self.backend {
            "live"
        } else if backend.is_some_and(|b| self.draining.contains(&b)) {
            "draining"
        } else if c.failed() {
            "failed"
        } else if !c.proven {
            "unproven"
        } else if c.running {
            "running"
        } else {
            "kept"
        }
    }

    /// Stopped releases to remove: good ones (proven, not failed) beyond the
    /// newest `keep`, and failed or unproven ones beyond the newest one (kept
    /// for its logs), so failed attempts never push a rollback target out.
    /// Never one the proxy uses, and never `spare` (the release just
    /// switched away from, even with `--keep 0`).
    pub fn prunable(&self, keep: usize, spare: &[&str]) -> Vec<&ContainerInfo> {
        let (mut good, mut bad) = (0, 0);
        let mut out = Vec::new();
        for c in self
            .list
            .iter()
            .filter(|c| !c.running && !c.restarting && !self.in_use(c))
        {
            let beyond = if c.proven && !c.failed() {
                good += 1;
                good > keep
            } else {
                bad += 1;
                bad > 1
            };
            if beyond && !spare.contains(&c.name.as_str()) {
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_shared::DrainingGeneration;

    fn release(n: u64, running: bool, port: u16) -> ContainerInfo {
        let labels = [
            (LABEL_APP, "shop".to_string()),
            (LABEL_RELEASE, n.to_string()),
            (LABEL_CONTAINER_PORT, "8080".to_string()),
            (LABEL_IMAGE, format!("shop:{n}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut ports = HashMap::new();
        if running {
            ports.insert(8080, format!("127.0.0.1:{port}"));
        }
        ContainerInfo {
            id: format!("id{n}"),
            name: container_name("shop", n),
            labels,
            status: if running { "running" } else { "exited" }.into(),
            running,
            ports,
            pinned: HashMap::from([(8080, port)]),
            proven: true,
            ..Default::default()
        }
    }

    fn status(backend: &str, draining: &[&str]) -> StatusResponse {
        StatusResponse {
            backend: Some(backend.into()),
            protocol: Default::default(),
            generation: 3,
            in_flight: 0,
            draining: draining
                .iter()
                .map(|b| DrainingGeneration {
                    backend: b.to_string(),
                    generation: 1,
                    in_flight: 1,
                })
                .collect(),
            listeners: Default::default(),
        }
    }

    #[test]
    fn live_is_found_by_the_pinned_port_even_when_stopped() {
        let list = vec![release(1, false, 4001), release(2, false, 4002)];
        let r = Releases::new(list, Some(&status("127.0.0.1:4002", &[])));
        assert_eq!(r.live().map(|c| c.name.as_str()), Some("shop-2"));
        assert_eq!(r.previous_good().map(|c| c.name.as_str()), Some("shop-1"));
        assert_eq!(r.next_number(), 3);
    }

    #[test]
    fn failed_releases_are_never_rollback_targets() {
        let mut failed = release(3, false, 4003);
        failed.name = "shop-3-failed".into();
        let mut unproven = release(4, true, 4004);
        unproven.proven = false;
        let list = vec![
            release(1, false, 4001),
            release(2, true, 4002),
            failed,
            unproven,
        ];
        let r = Releases::new(list, Some(&status("127.0.0.1:4002", &[])));
        assert_eq!(r.previous_good().map(|c| c.name.as_str()), Some("shop-1"));
        assert_eq!(r.find("3").map(|c| c.name.as_str()), None);
        assert_eq!(r.find("shop:1").map(|c| c.name.as_str()), Some("shop-1"));
        assert_eq!(r.find("1").map(|c| c.name.as_str()), Some("shop-1"));
        assert_eq!(r.list[0].release(), Some(4));
    }

    #[test]
    fn draining_and_live_releases_are_never_pruned() {
        let list = (1..=6)
            .map(|n| release(n, n == 6, 4000 + n as u16))
            .collect();
        let r = Releases::new(list, Some(&status("127.0.0.1:4006", &["127.0.0.1:4001"])));
        let names = |v: Vec<&ContainerInfo>| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        // 6 live, 5 and 4 kept, 3 and 2 pruned, 1 draining.
        assert_eq!(names(r.prunable(2, &["shop-5"])), vec!["shop-3", "shop-2"]);
        assert_eq!(
            names(r.prunable(0, &["shop-5"])),
            vec!["shop-4", "shop-3", "shop-2"]
        );
        assert_eq!(r.role(&r.list[5]), "draining");
    }

    #[test]
    fn failed_attempts_do_not_push_rollback_targets_out() {
        let mut list: Vec<ContainerInfo> = (1..=6)
            .map(|n| release(n, n == 6, 4000 + n as u16))
            .collect();
        for c in &mut list[2..5] {
            c.name = format!("{}{FAILED_SUFFIX}", c.name);
        }
        let r = Releases::new(list, Some(&status("127.0.0.1:4006", &[])));
        let names: Vec<&str> = r.prunable(2, &[]).iter().map(|c| c.name.as_str()).collect();
        // 5-failed kept for its logs, 4-failed and 3-failed pruned, 2 and 1 kept.
        assert_eq!(names, vec!["shop-4-failed", "shop-3-failed"]);
    }

    #[test]
    fn migrated_names_give_the_number() {
        let mut c = release(0, true, 1);
        c.labels.remove(LABEL_RELEASE);
        c.name = "shop-7".into();
        assert_eq!(c.release(), Some(7));
        c.name = "shop-blue".into();
        assert_eq!(c.release(), None);
    }
}
