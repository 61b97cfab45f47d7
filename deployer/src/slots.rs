//! Blue and green: which container is which, and which one the proxy uses.
//!
//! The live slot is decided by matching the proxy's backend address against
//! the published ports of the app's labelled containers; names and `docker ps`
//! output are never parsed for it.

use std::collections::HashMap;

pub const LABEL_APP: &str = "handoff.app";
pub const LABEL_SLOT: &str = "handoff.slot";
pub const LABEL_IMAGE: &str = "handoff.image";
pub const LABEL_CONTAINER_PORT: &str = "handoff.container-port";
pub const LABEL_HEALTH_PORT: &str = "handoff.health-port";
pub const LABEL_HEALTH_PATH: &str = "handoff.health-path";
pub const LABEL_DEPLOYED_AT: &str = "handoff.deployed-at";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::Blue, Slot::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn container_name(self, app: &str) -> String {
        format!("{app}-{}", self.as_str())
    }
}

/// What handoff needs to know about one slot's container.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// Docker's state word: created, running, restarting, exited, ...
    pub status: String,
    pub running: bool,
    pub restarting: bool,
    pub restart_count: i64,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Container port → `127.0.0.1:HOSTPORT`, only while running.
    pub ports: HashMap<u16, String>,
    /// Host ports the container asks for explicitly, even while stopped.
    pub pinned_ports: Vec<u16>,
}

impl ContainerInfo {
    pub fn slot(&self) -> Option<Slot> {
        self.labels.get(LABEL_SLOT).and_then(|s| Slot::parse(s))
    }

    pub fn image(&self) -> &str {
        self.labels.get(LABEL_IMAGE).map_or("?", String::as_str)
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

    /// The address the proxy should use: the app port as published on 127.0.0.1.
    pub fn backend(&self) -> Option<&str> {
        self.container_port()
            .and_then(|p| self.ports.get(&p))
            .map(String::as_str)
    }

    pub fn health_addr(&self) -> Option<&str> {
        self.health_port()
            .and_then(|p| self.ports.get(&p))
            .map(String::as_str)
    }
}

/// Both slots of one app plus the proxy's opinion.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    pub blue: Option<ContainerInfo>,
    pub green: Option<ContainerInfo>,
    /// The slot whose running container is the proxy's current backend.
    pub live: Option<Slot>,
}

impl Slots {
    pub fn from_containers(containers: Vec<ContainerInfo>, proxy_backend: Option<&str>) -> Slots {
        let mut slots = Slots::default();
        for c in containers {
            match c.slot() {
                Some(Slot::Blue) => slots.blue = Some(c),
                Some(Slot::Green) => slots.green = Some(c),
                None => {}
            }
        }
        slots.live = Slot::BOTH.into_iter().find(|s| {
            slots
                .get(*s)
                .is_some_and(|c| c.running && c.backend().is_some() && c.backend() == proxy_backend)
        });
        slots
    }

    pub fn get(&self, slot: Slot) -> Option<&ContainerInfo> {
        match slot {
            Slot::Blue => self.blue.as_ref(),
            Slot::Green => self.green.as_ref(),
        }
    }

    /// Where a new release goes: the slot that is not live. With nothing
    /// live (first deploy, or the proxy points elsewhere), blue, unless only
    /// blue is running, so a running container is never replaced needlessly.
    pub fn target(&self) -> Slot {
        match self.live {
            Some(live) => live.other(),
            None => {
                let running = |s| self.get(s).is_some_and(|c: &ContainerInfo| c.running);
                if running(Slot::Blue) && !running(Slot::Green) {
                    Slot::Green
                } else {
                    Slot::Blue
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(slot: Slot, running: bool, host_port: u16) -> ContainerInfo {
        let labels = [(LABEL_SLOT, slot.as_str()), (LABEL_CONTAINER_PORT, "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut ports = HashMap::new();
        if running {
            ports.insert(8080, format!("127.0.0.1:{host_port}"));
        }
        ContainerInfo {
            id: String::new(),
            name: slot.as_str().into(),
            labels,
            status: if running { "running" } else { "exited" }.into(),
            running,
            restarting: false,
            restart_count: 0,
            exit_code: None,
            started_at: None,
            finished_at: None,
            ports,
            pinned_ports: Vec::new(),
        }
    }

    #[test]
    fn first_deploy_goes_to_blue() {
        let slots = Slots::from_containers(vec![], None);
        assert_eq!((slots.live, slots.target()), (None, Slot::Blue));
    }

    #[test]
    fn live_slot_comes_from_the_proxy_backend() {
        let cs = vec![
            container(Slot::Blue, false, 0),
            container(Slot::Green, true, 4001),
        ];
        let slots = Slots::from_containers(cs.clone(), Some("127.0.0.1:4001"));
        assert_eq!(
            (slots.live, slots.target()),
            (Some(Slot::Green), Slot::Blue)
        );
        // The proxy points somewhere else: nothing is live, keep the running one.
        let slots = Slots::from_containers(cs, Some("127.0.0.1:9999"));
        assert_eq!((slots.live, slots.target()), (None, Slot::Blue));
        let cs = vec![container(Slot::Blue, true, 4000)];
        let slots = Slots::from_containers(cs, Some("127.0.0.1:9999"));
        assert_eq!((slots.live, slots.target()), (None, Slot::Green));
    }
}
