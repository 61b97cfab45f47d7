//! The proxy's control socket for one app, with errors mapped to exit code 4.
//!
//! One proxy routes many apps (issue 14). A deployer app is either
//! - the **default app**, switched with `PUT /v1/backend` and read with
//!   `GET /v1/status`, exactly as before there were apps; or
//! - a **host-routed app**, the proxy app of the same name, switched with
//!   `PUT /v1/apps/{name}` and read with `GET /v1/apps/{name}`.
//!
//! Which one is decided by [`Proxy::resolve`], the same rule for every
//! command: route flags (`--host`) make it host-routed; without them, an app
//! the proxy already has under that name keeps its routes (so rollback,
//! status, releases and a later deploy without `--host` act on it), and
//! anything else is the default app. Both kinds answer in the one shape the
//! rest of handoff uses ([`StatusResponse`], [`SwitchResponse`]), so the
//! readiness rule, the watched switch and the recovery from lost answers
//! are the same code for both.
//!
//! A control call whose answer is lost (the proxy crashed, the connection
//! dropped, a timeout) says nothing about whether the proxy acted on it.
//! [`Proxy::status_within`] re-reads the app's status, waiting a bounded time
//! for a restarting proxy, so callers act on what the proxy says is true. An
//! answer that refuses (4xx) is not lost: nothing changed
//! ([`Failure::ProxyRefused`]).

use crate::error::{Failure, Result};
use crate::routes::Routes;
use handoff_shared::{
    AppStatus, BackendProtocol, ControlClient, ControlError, PutApp, SetBackend, StatusResponse,
    SwitchResponse,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a lost answer waits for a restarting proxy to answer again
/// (see [`Proxy::status_within`]).
pub const PROXY_RESTART_WAIT: Duration = Duration::from_secs(30);

/// Which of the proxy's apps the calls act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The default app, through the `/v1/backend` and `/v1/status` shorthands.
    Default,
    /// The proxy app `name`, through `/v1/apps/{name}`.
    App {
        name: String,
        /// Sent with the next forward switch (the deploy that registers or
        /// changes them); `None` keeps what the proxy has.
        routes: Option<Routes>,
        /// The routes the app had before this command; a switch back sends
        /// them again, so a failed deploy also undoes its route change.
        before: Option<Routes>,
    },
}

pub struct Proxy {
    client: ControlClient,
    target: Target,
}

impl Proxy {
    /// The default app, as before issue 14.
    pub fn new(socket: &Path) -> Self {
        Self {
            client: ControlClient::new(socket),
            target: Target::Default,
        }
    }

    /// Decides the target of `app` (see the module doc): `routes` given →
    /// host-routed; else the proxy app of that name if there is one; else
    /// the default app. A proxy that does not know `/v1/apps` (an older
    /// one answers 404) has only the default app.
    pub async fn resolve(socket: &Path, app: &str, routes: Option<Routes>) -> Result<Self> {
        let mut proxy = Self::new(socket);
        let existing = match proxy.client.app(app).await {
            Ok(status) => Some(status),
            Err(ControlError::Api { status, .. }) if status.is_client_error() => None,
            Err(e) => return Err(proxy.err("report the app", e)),
        };
        proxy.target = target_for(app, routes, existing.as_ref());
        Ok(proxy)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The proxy app name, for a host-routed app.
    pub fn app_name(&self) -> Option<&str> {
        match &self.target {
            Target::Default => None,
            Target::App { name, .. } => Some(name),
        }
    }

    pub fn client(&self) -> &ControlClient {
        &self.client
    }

    pub fn err(&self, doing: &str, e: ControlError) -> Failure {
        let text = format!(
            "proxy control ({}) failed to {doing}: {e}",
            self.client.path().display()
        );
        match e {
            // The proxy answered and refused: it changed nothing.
            ControlError::Api { status, .. } if status.is_client_error() => Failure::ProxyRefused {
                status: status.as_u16(),
                message: text,
            },
            _ => Failure::Proxy(text),
        }
    }

    /// The app's backend, generation and drains. A host-routed app the
    /// proxy does not have (yet) has no backend.
    pub async fn status(&self) -> Result<StatusResponse> {
        match &self.target {
            Target::Default => self
                .client
                .status()
                .await
                .map_err(|e| self.err("report its status", e)),
            Target::App { name, .. } => match self.client.app(name).await {
                Ok(app) => Ok(status_of(&app)),
                Err(ControlError::Api { status, .. }) if status.as_u16() == 404 => {
                    Ok(status_of(&AppStatus::default()))
                }
                Err(e) => Err(self.err(&format!("report app {name}"), e)),
            },
        }
    }

    /// The proxy's status, retried every 250 ms for up to `wait` (a proxy
    /// that is restarting answers again within seconds).
    pub async fn status_within(&self, wait: Duration) -> Result<StatusResponse> {
        let started = Instant::now();
        loop {
            match self.status().await {
                Ok(s) => return Ok(s),
                Err(e) if started.elapsed() >= wait => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Switches to `addr` and answers after the drain: `PUT /v1/backend`,
    /// or `PUT /v1/apps/{name}` carrying the routes to register.
    ///
    /// Without a `protocol` the new backend speaks what the live one does,
    /// so a gRPC app stays h2c across deploys and rollbacks.
    pub async fn switch(
        &self,
        addr: &str,
        drain: Duration,
        protocol: Option<BackendProtocol>,
    ) -> Result<SwitchResponse> {
        let routes = match &self.target {
            Target::App { routes, .. } => routes.as_ref(),
            Target::Default => None,
        };
        self.switch_with(addr, drain, protocol, routes).await
    }

    /// Back to `addr` after a failed watch, with the routes the app had
    /// before (the protocol of the live backend is kept).
    pub async fn switch_back(&self, addr: &str, drain: Duration) -> Result<SwitchResponse> {
        let routes = match &self.target {
            Target::App { before, .. } => before.as_ref(),
            Target::Default => None,
        };
        self.switch_with(addr, drain, None, routes).await
    }

    async fn switch_with(
        &self,
        addr: &str,
        drain: Duration,
        protocol: Option<BackendProtocol>,
        routes: Option<&Routes>,
    ) -> Result<SwitchResponse> {
        let protocol = match protocol {
            Some(p) => p,
            None => self.status().await?.protocol,
        };
        let doing = format!("switch to {addr}");
        match &self.target {
            Target::Default => {
                let req = SetBackend {
                    addr: addr.to_string(),
                    drain_timeout: Some(humantime::format_duration(drain).to_string()),
                    protocol,
                };
                self.client
                    .set_backend(&req)
                    .await
                    .map_err(|e| self.err(&doing, e))
            }
            Target::App { name, .. } => {
                let req = put_request(routes, addr, drain, protocol);
                let answer = self
                    .client
                    .put_app(name, &req)
                    .await
                    .map_err(|e| self.refusal(name, routes.is_some(), self.err(&doing, e)))?;
                answer.switch.ok_or_else(|| {
                    Failure::Proxy(format!(
                        "the proxy answered PUT /v1/apps/{name} without the switch to {addr}"
                    ))
                })
            }
        }
    }

    /// A refused registration says what to fix.
    fn refusal(&self, app: &str, with_routes: bool, failure: Failure) -> Failure {
        match failure {
            Failure::ProxyRefused { status, message } if status == 409 && with_routes => {
                Failure::ProxyRefused {
                    status,
                    message: format!(
                        "{message}. Fix: give {app} --host/--path-prefix values that no other app \
                         claims, or remove the app that claims them (`handoff list` shows every \
                         app's routes)"
                    ),
                }
            }
            other => other,
        }
    }

    /// Waits until the proxy no longer drains `backend` for this app, for
    /// at most `wait`. Returns the requests still in flight there when it
    /// gave up (0 when drained, or when the proxy cannot be asked: a
    /// restarted proxy has no requests from before).
    pub async fn wait_drained(&self, backend: &str, wait: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let in_flight = match self.status().await {
                Ok(s) => s
                    .draining
                    .iter()
                    .filter(|d| d.backend == backend)
                    .map(|d| d.in_flight)
                    .sum(),
                Err(_) => 0,
            };
            if in_flight == 0 || started.elapsed() >= wait {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Proxy {
    /// The backends the proxy's *other* apps route to or drain, with the
    /// app: a container there belongs to this app's releases only by its
    /// label, and stopping or removing it would cut that other app. Empty
    /// for a proxy without `/v1/apps`.
    pub async fn used_by_other_apps(&self) -> Result<Vec<(String, String)>> {
        match self.client.apps().await {
            Ok(list) => Ok(used_by_others(&self.target, &list.apps)),
            Err(ControlError::Api { status, .. }) if status.as_u16() == 404 => Ok(Vec::new()),
            Err(e) => Err(self.err("list its apps", e)),
        }
    }
}

/// `(app, backend)` for every backend, active or draining, of the apps
/// that are not `target`.
pub fn used_by_others(target: &Target, apps: &[AppStatus]) -> Vec<(String, String)> {
    backends_of(apps.iter().filter(|a| match target {
        Target::Default => !a.default,
        Target::App { name, .. } => a.name != *name,
    }))
}

/// `(app, backend)` for every backend, active or draining, of `apps`.
pub fn backends_of<'a>(apps: impl Iterator<Item = &'a AppStatus>) -> Vec<(String, String)> {
    apps.flat_map(|a| {
        a.backend
            .iter()
            .chain(a.draining.iter().map(|d| &d.backend))
            .map(|b| (a.name.clone(), b.clone()))
    })
    .collect()
}

/// The resolution rule of [`Proxy::resolve`], given what the proxy said.
fn target_for(app: &str, routes: Option<Routes>, existing: Option<&AppStatus>) -> Target {
    match (routes, existing) {
        (None, None) => Target::Default,
        (routes, existing) => Target::App {
            name: app.to_string(),
            routes,
            before: existing.map(Routes::of),
        },
    }
}

/// One app's status in the shape of `GET /v1/status`.
pub fn status_of(app: &AppStatus) -> StatusResponse {
    StatusResponse {
        backend: app.backend.clone(),
        protocol: app.protocol,
        generation: app.generation,
        in_flight: app.in_flight,
        draining: app.draining.clone(),
        listeners: Default::default(),
    }
}

/// `PUT /v1/apps/{name}`: the backend always; the routes only when given
/// (left out, the proxy keeps the app's current ones).
pub fn put_request(
    routes: Option<&Routes>,
    addr: &str,
    drain: Duration,
    protocol: BackendProtocol,
) -> PutApp {
    PutApp {
        hosts: routes.map(|r| r.hosts.clone()),
        path_prefixes: routes.map(|r| r.path_prefixes.clone()),
        strip_prefix: routes.map(|r| r.strip_prefix),
        default: None,
        backend: Some(addr.to_string()),
        protocol,
        drain_timeout: Some(humantime::format_duration(drain).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_shared::DrainingGeneration;

    fn routes() -> Routes {
        Routes {
            hosts: vec!["shop.example.com".into()],
            path_prefixes: vec!["/api".into()],
            strip_prefix: true,
        }
    }

    #[test]
    fn the_rule_flags_then_the_proxys_apps_then_the_default_app() {
        assert_eq!(target_for("shop", None, None), Target::Default);
        let existing = AppStatus {
            name: "shop".into(),
            hosts: vec!["old.example.com".into()],
            ..Default::default()
        };
        // Known to the proxy: host-routed, its routes kept and remembered.
        assert_eq!(
            target_for("shop", None, Some(&existing)),
            Target::App {
                name: "shop".into(),
                routes: None,
                before: Some(Routes {
                    hosts: vec!["old.example.com".into()],
                    ..Default::default()
                }),
            }
        );
        // Flags: host-routed whether or not the proxy has it.
        assert_eq!(
            target_for("shop", Some(routes()), None),
            Target::App {
                name: "shop".into(),
                routes: Some(routes()),
                before: None,
            }
        );
    }

    #[test]
    fn an_app_status_maps_to_the_status_shape() {
        let app = AppStatus {
            name: "shop".into(),
            backend: Some("127.0.0.1:4001".into()),
            protocol: BackendProtocol::H2c,
            generation: 7,
            in_flight: 3,
            draining: vec![DrainingGeneration {
                backend: "127.0.0.1:4000".into(),
                generation: 6,
                in_flight: 2,
            }],
            ..Default::default()
        };
        let s = status_of(&app);
        assert_eq!(s.backend.as_deref(), Some("127.0.0.1:4001"));
        assert_eq!(s.protocol, BackendProtocol::H2c);
        assert_eq!((s.generation, s.in_flight), (7, 3));
        assert_eq!(s.draining, app.draining);
        // An app the proxy does not have: nothing live, nothing draining.
        let none = status_of(&AppStatus::default());
        assert_eq!((none.backend, none.generation), (None, 0));
        assert!(none.draining.is_empty());
    }

    #[test]
    fn registering_sends_every_route_field_and_a_switch_back_only_the_backend() {
        let r = routes();
        let req = put_request(
            Some(&r),
            "127.0.0.1:4001",
            Duration::from_secs(30),
            BackendProtocol::Http1,
        );
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"hosts": ["shop.example.com"], "path_prefixes": ["/api"],
                               "strip_prefix": true, "backend": "127.0.0.1:4001",
                               "drain_timeout": "30s"})
        );
        let back = put_request(
            None,
            "127.0.0.1:4000",
            Duration::from_secs(5),
            BackendProtocol::H2c,
        );
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::json!({"backend": "127.0.0.1:4000", "protocol": "h2c",
                               "drain_timeout": "5s"})
        );
    }

    #[test]
    fn other_apps_backends_active_and_draining() {
        let apps = [
            AppStatus {
                name: "default".into(),
                default: true,
                backend: Some("127.0.0.1:1".into()),
                ..Default::default()
            },
            AppStatus {
                name: "shop".into(),
                backend: Some("127.0.0.1:2".into()),
                draining: vec![DrainingGeneration {
                    backend: "127.0.0.1:3".into(),
                    generation: 1,
                    in_flight: 1,
                }],
                ..Default::default()
            },
        ];
        let pairs = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(a, b)| format!("{a}={b}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(used_by_others(&Target::Default, &apps)),
            ["shop=127.0.0.1:2", "shop=127.0.0.1:3"]
        );
        let shop = Target::App {
            name: "shop".into(),
            routes: None,
            before: None,
        };
        assert_eq!(pairs(used_by_others(&shop, &apps)), ["default=127.0.0.1:1"]);
    }

    #[test]
    fn a_refused_answer_is_not_a_lost_one() {
        let proxy = Proxy::new(Path::new("/nonexistent.sock"));
        let conflict = ControlError::Api {
            status: reqwest::StatusCode::CONFLICT,
            message: "host shop.example.com is claimed by app blog".into(),
        };
        let f = proxy.refusal("shop", true, proxy.err("switch", conflict));
        assert!(
            matches!(f, Failure::ProxyRefused { status: 409, .. }),
            "{f:?}"
        );
        assert_eq!(f.exit_code(), 4);
        let text = f.to_string();
        assert!(text.contains("claimed by app blog"), "{text}");
        assert!(
            text.contains("Fix: give shop --host/--path-prefix"),
            "{text}"
        );
        let gone = ControlError::Api {
            status: reqwest::StatusCode::BAD_GATEWAY,
            message: "x".into(),
        };
        assert!(matches!(proxy.err("switch", gone), Failure::Proxy(_)));
    }
}
