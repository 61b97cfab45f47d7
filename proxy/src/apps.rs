//! Every app the proxy routes, and the route table built from them.
//!
//! Each [`App`] has its own [`Router`] (active generation, drain), so
//! switching app A never touches app B's in-flight requests, pinned
//! upstream connections or drain. The [`RouteTable`] is an immutable
//! snapshot in an `ArcSwap`: the request path does one lock-free load and a
//! hash lookup; writers (the control API, serialised by its lock) build a
//! new table and swap it in whole.

use crate::drain::Generation;
use crate::metrics::{AppCounters, InFlightSeries, Metrics};
use crate::router::Router;
use crate::routes::{RouteError, RouteSpec, RouteTable};
use crate::upstream::{Pinned, UpstreamSettings};
use arc_swap::ArcSwap;
use handoff_shared::{AppStatus, DrainingGeneration};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One app: a name, the requests it claims, its backend generations.
pub struct App {
    pub name: Arc<str>,
    pub spec: RouteSpec,
    pub router: Arc<Router>,
    /// Requests answered for this app, by status class; handles into the
    /// metrics family, taken once so a request only increments.
    pub counters: Arc<AppCounters>,
}

impl App {
    pub fn status(&self) -> AppStatus {
        let active = self.router.active();
        AppStatus {
            name: self.name.to_string(),
            hosts: self.spec.hosts.clone(),
            path_prefixes: self.spec.path_prefixes.clone(),
            strip_prefix: self.spec.strip_prefix,
            default: self.spec.default,
            backend: active.as_ref().map(|g| g.addr.to_string()),
            protocol: active.as_ref().map(|g| g.protocol()).unwrap_or_default(),
            generation: active.as_ref().map_or(0, |g| g.id),
            in_flight: active.as_ref().map_or(0, |g| g.in_flight()),
            draining: self.router.draining(),
        }
    }
}

/// Where a request goes: its app, and the path to forward when the route
/// strips its prefix.
pub struct Route {
    pub app: Arc<App>,
    pub rewritten: Option<String>,
}

pub struct Apps {
    table: ArcSwap<RouteTable<Arc<App>>>,
    /// The same apps as a list, published with the table, for what needs
    /// every app without the lock (idle pinned connections going home).
    snapshot: ArcSwap<Vec<Arc<App>>>,
    /// By name; the source the table is built from.
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    settings: UpstreamSettings,
    metrics: &'static Metrics,
}

impl Apps {
    pub fn new(settings: UpstreamSettings, metrics: &'static Metrics) -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            snapshot: ArcSwap::from_pointee(Vec::new()),
            apps: Mutex::new(BTreeMap::new()),
            settings,
            metrics,
        }
    }

    /// The app for a request: `authority` is its Host (or absolute-form or
    /// HTTP/2 `:authority`), `path_and_query` its target.
    pub fn route(&self, authority: Option<&str>, path_and_query: &str) -> Option<Route> {
        let table = self.table.load();
        let found = table.find(authority, path_and_query)?;
        Some(Route {
            app: Arc::clone(found.app),
            rewritten: found.rewritten,
        })
    }

    /// Whether no app exists at all (a proxy not configured yet).
    pub fn is_empty(&self) -> bool {
        self.snapshot.load().is_empty()
    }

    pub fn get(&self, name: &str) -> Option<Arc<App>> {
        self.lock().get(name).cloned()
    }

    /// Every app, by name.
    pub fn list(&self) -> Vec<Arc<App>> {
        self.lock().values().cloned().collect()
    }

    /// The app that takes requests no host route takes.
    pub fn default_app(&self) -> Option<Arc<App>> {
        self.lock().values().find(|a| a.spec.default).cloned()
    }

    /// Creates `name` with `spec`, or gives it `spec` (keeping its router,
    /// so its generations and drain are untouched). Nothing changes when
    /// the new table cannot be built (a conflict, a bad host or prefix).
    pub fn upsert(&self, name: &str, spec: RouteSpec) -> Result<(Arc<App>, bool), RouteError> {
        let mut apps = self.lock();
        let existing = apps.get(name).cloned();
        let created = existing.is_none();
        let app = Arc::new(App {
            name: name.into(),
            spec,
            router: existing.as_ref().map_or_else(
                || Arc::new(Router::new(self.settings.clone())),
                |a| Arc::clone(&a.router),
            ),
            counters: self.metrics.app_counters(name),
        });
        let mut next = apps.clone();
        next.insert(name.to_string(), Arc::clone(&app));
        self.publish(&next)?;
        *apps = next;
        Ok((app, created))
    }

    /// Whether `name` with `spec` would make a valid table with the other
    /// apps, without changing anything.
    pub fn check(&self, name: &str, spec: &RouteSpec) -> Result<(), RouteError> {
        let apps = self.lock();
        let others = apps
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, a)| (n.as_str(), &a.spec, ()));
        RouteTable::build(others.chain(std::iter::once((name, spec, ())))).map(|_| ())
    }

    /// Stops routing to `name` and forgets it; its router is returned so
    /// the caller can retire and drain what it still serves.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
        let mut apps = self.lock();
        let mut next = apps.clone();
        let app = next.remove(name)?;
        self.publish(&next)
            .expect("a table without one app has no new conflict");
        *apps = next;
        self.metrics.forget_app(name);
        Some(app)
    }

    fn publish(&self, apps: &BTreeMap<String, Arc<App>>) -> Result<(), RouteError> {
        let table = RouteTable::build(
            apps.iter()
                .map(|(name, app)| (name.as_str(), &app.spec, Arc::clone(app))),
        )?;
        self.table.store(Arc::new(table));
        self.snapshot
            .store(Arc::new(apps.values().cloned().collect()));
        Ok(())
    }

    /// The active generation with id `id`, in whichever app (a client
    /// connection's pinned upstream connection goes back to its pool).
    pub fn active_generation(&self, id: u64) -> Option<Arc<Generation>> {
        self.snapshot
            .load()
            .iter()
            .filter_map(|a| a.router.active())
            .find(|g| g.id == id)
    }

    /// Gives a client connection's pinned upstream connection back to the
    /// pool of its own generation, found among every app's active ones; a
    /// connection of a generation no longer active is closed instead.
    pub fn release_pinned(&self, pinned: &Pinned) {
        let Some(id) = pinned.pinned_id() else { return };
        match self.active_generation(id) {
            Some(g) => pinned.release_to(g.id, &g.pool),
            None => pinned.drop_pinned(),
        }
    }

    /// Every generation of every app, active or draining, with its app.
    pub fn generations(&self) -> Vec<(Arc<str>, Arc<Generation>, &'static str)> {
        let mut out = Vec::new();
        for app in self.list() {
            if let Some(g) = app.router.active() {
                out.push((Arc::clone(&app.name), g, "active"));
            }
            for g in app.router.retired() {
                out.push((Arc::clone(&app.name), g, "draining"));
            }
        }
        out
    }

    /// Every generation's in-flight count, for a metrics scrape.
    pub fn in_flight_series(&self) -> Vec<InFlightSeries> {
        self.generations()
            .into_iter()
            .map(|(app, g, state)| InFlightSeries {
                app,
                generation: g.id,
                backend: g.addr.to_string(),
                state,
                in_flight: g.in_flight(),
            })
            .collect()
    }

    /// Generations still serving requests after a switch or a removal, of
    /// every app (the shutdown drain waits for them all).
    pub fn all_draining(&self) -> Vec<DrainingGeneration> {
        self.list()
            .iter()
            .flat_map(|a| a.router.draining())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<App>>> {
        self.apps.lock().expect("apps poisoned")
    }
}
