//! The control API's app endpoints: `GET /v1/apps`, `GET|PUT|DELETE
//! /v1/apps/{app}`, and the default-app shorthands `PUT /v1/backend` and
//! `GET /v1/status` that scripts from before apps still use.
//!
//! Every change follows the same steps under the switch lock: check the
//! new route table builds (409 naming the other app, 400 for a bad host or
//! prefix), write the state file with every app, publish the table, switch
//! the app's generation. The drain is waited for after the lock is let go,
//! so app B's switch never waits for app A's drain.

use crate::apps::App;
use crate::body::ProxyBody;
use crate::control::{error, json, Control};
use crate::routes::{RouteError, RouteSpec};
use crate::state::{self, AppState, State};
use crate::switch;
use handoff_shared::{
    AppsResponse, BackendProtocol, PutApp, PutAppResponse, RemoveAppResponse, SetBackend,
    StatusResponse, SwitchResponse, DEFAULT_APP,
};
use http::uri::Authority;
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// A backend change checked and ready to apply.
struct Plan {
    addr: Authority,
    raw: String,
    protocol: BackendProtocol,
}

impl Control {
    pub(crate) fn list_apps(&self) -> Response<ProxyBody> {
        let apps = self.apps.list().iter().map(|a| a.status()).collect();
        json(StatusCode::OK, &AppsResponse { apps })
    }

    pub(crate) fn get_app(&self, name: &str) -> Response<ProxyBody> {
        match self.apps.get(name) {
            Some(app) => json(StatusCode::OK, &app.status()),
            None => no_such_app(name),
        }
    }

    /// `GET /v1/status`: the default app, as before apps.
    pub(crate) fn status(&self) -> StatusResponse {
        let app = self.apps.default_app().map(|a| a.status());
        StatusResponse {
            backend: app.as_ref().and_then(|a| a.backend.clone()),
            protocol: app.as_ref().map(|a| a.protocol).unwrap_or_default(),
            generation: app.as_ref().map_or(0, |a| a.generation),
            in_flight: app.as_ref().map_or(0, |a| a.in_flight),
            draining: app.map(|a| a.draining).unwrap_or_default(),
            listeners: self.listeners.clone(),
        }
    }

    /// `PUT /v1/backend`: switches the default app, creating it (named
    /// `default`) when there is none.
    pub(crate) async fn set_backend(&self, req: SetBackend, uid: u32) -> Response<ProxyBody> {
        let name = self
            .apps
            .default_app()
            .map_or_else(|| DEFAULT_APP.to_string(), |a| a.name.to_string());
        let put = PutApp {
            default: Some(true),
            backend: Some(req.addr),
            protocol: req.protocol,
            drain_timeout: req.drain_timeout,
            ..PutApp::default()
        };
        match self.change_app(&name, put, uid).await {
            Ok(done) => match done.switch {
                Some(switched) => json(StatusCode::OK, &switched),
                None => error(StatusCode::INTERNAL_SERVER_ERROR, "no switch was made"),
            },
            Err(resp) => resp,
        }
    }

    /// `PUT /v1/apps/{app}`.
    pub(crate) async fn put_app(&self, name: &str, req: PutApp, uid: u32) -> Response<ProxyBody> {
        if let Err(e) = handoff_shared::validate_app_name(name) {
            return error(StatusCode::BAD_REQUEST, e);
        }
        match self.change_app(name, req, uid).await {
            Ok(done) => json(
                if done.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &done,
            ),
            Err(resp) => resp,
        }
    }

    /// Creates or updates `name`; with a backend, switches and waits for
    /// the drain.
    async fn change_app(
        &self,
        name: &str,
        req: PutApp,
        uid: u32,
    ) -> Result<PutAppResponse, Response<ProxyBody>> {
        let drain_timeout = self
            .drain_timeout(req.drain_timeout.as_deref())
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let plan = match &req.backend {
            Some(addr) => Some(self.plan(addr, req.protocol).await?),
            None => None,
        };
        let (app, created, switched) = {
            let _serial = self.switch_lock.lock().await;
            self.refuse_after_hand_off()?;
            let current = self.apps.get(name);
            let spec = merged_spec(current.as_ref().map(|a| &a.spec), &req);
            self.apps.check(name, &spec).map_err(route_error)?;
            let backend = match &plan {
                Some(p) => Some((p.raw.clone(), p.protocol)),
                None => current.as_ref().and_then(backend_of),
            };
            self.persist(Some(app_state(name, &spec, backend)), None)
                .await?;
            let (app, created) = self.apps.upsert(name, spec).map_err(route_error)?;
            let switched = plan.map(|p| app.router.switch(p.addr, p.protocol));
            (app, created, switched)
        };
        tracing::info!(uid, app = name, created, hosts = ?app.spec.hosts,
            prefixes = ?app.spec.path_prefixes, default = app.spec.default, "app routes set");
        let Some((new, previous)) = switched else {
            return Ok(PutAppResponse {
                app: app.status(),
                created,
                switch: None,
            });
        };
        tracing::info!(uid, app = name, backend = %new.addr, protocol = %new.protocol(),
            generation = new.id, previous = previous.as_ref().map(|p| p.addr.to_string()), "switched");
        self.metrics.switched();
        let outcome = crate::drain::wait_all(&app.router.retired(), drain_timeout).await;
        self.metrics.drain_done(outcome.drained, outcome.waited);
        tracing::info!(
            app = name,
            generation = new.id,
            drained = outcome.drained,
            in_flight = outcome.in_flight,
            waited_ms = outcome.waited.as_millis() as u64,
            "drain finished"
        );
        Ok(PutAppResponse {
            app: app.status(),
            created,
            switch: Some(SwitchResponse {
                backend: new.addr.to_string(),
                previous: previous.map(|p| p.addr.to_string()),
                generation: new.id,
                drained: outcome.drained,
                in_flight: outcome.in_flight,
                drain_ms: outcome.waited.as_millis() as u64,
            }),
        })
    }

    /// `DELETE /v1/apps/{app}`: stop routing to it, drain, forget it.
    pub(crate) async fn delete_app(&self, name: &str, uid: u32) -> Response<ProxyBody> {
        let app = {
            let _serial = self.switch_lock.lock().await;
            if let Err(resp) = self.refuse_after_hand_off() {
                return resp;
            }
            if self.apps.get(name).is_none() {
                return no_such_app(name);
            }
            if let Err(resp) = self.persist(None, Some(name)).await {
                return resp;
            }
            let Some(app) = self.apps.remove(name) else {
                return no_such_app(name);
            };
            app.router.retire_active();
            app
        };
        tracing::info!(uid, app = name, "app removed; draining");
        let outcome =
            crate::drain::wait_all(&app.router.retired(), self.default_drain_timeout).await;
        tracing::info!(
            app = name,
            drained = outcome.drained,
            in_flight = outcome.in_flight,
            waited_ms = outcome.waited.as_millis() as u64,
            "removed app drained"
        );
        json(
            StatusCode::OK,
            &RemoveAppResponse {
                name: name.to_string(),
                drained: outcome.drained,
                in_flight: outcome.in_flight,
                drain_ms: outcome.waited.as_millis() as u64,
            },
        )
    }

    /// A process that handed its sockets to a new one (see
    /// [`crate::upgrade`]) changes nothing more: the new one owns the state.
    /// Called with the switch lock held.
    #[allow(clippy::result_large_err)]
    fn refuse_after_hand_off(&self) -> Result<(), Response<ProxyBody>> {
        if self.handed_off.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this handoff-proxy handed its sockets to a new process; send the change again",
            ));
        }
        Ok(())
    }

    fn drain_timeout(&self, text: Option<&str>) -> Result<Duration, String> {
        let given = text.map(handoff_shared::parse_duration).transpose()?;
        Ok(given.unwrap_or(self.default_drain_timeout))
    }

    /// Checks a backend address: valid, not this proxy, accepting.
    async fn plan(
        &self,
        addr: &str,
        protocol: BackendProtocol,
    ) -> Result<Plan, Response<ProxyBody>> {
        let own: Vec<std::net::SocketAddr> = [
            &self.listeners.http,
            &self.listeners.https,
            &self.listeners.admin,
        ]
        .into_iter()
        .filter_map(|l| l.as_deref()?.parse().ok())
        .collect();
        match switch::plan(addr, &own).await {
            Ok(authority) => Ok(Plan {
                addr: authority,
                raw: addr.to_string(),
                protocol,
            }),
            Err(e) => Err(error(e.status(), e.to_string())),
        }
    }

    /// Writes every app to the state file, with `changed` in place of its
    /// namesake and without `removed`. Called under the switch lock.
    async fn persist(
        &self,
        changed: Option<AppState>,
        removed: Option<&str>,
    ) -> Result<(), Response<ProxyBody>> {
        let mut apps: Vec<AppState> = self
            .apps
            .list()
            .iter()
            .filter(|a| Some(&*a.name) != removed)
            .filter(|a| changed.as_ref().is_none_or(|c| *c.name != *a.name))
            .map(|a| app_state(&a.name, &a.spec, backend_of(a)))
            .collect();
        apps.extend(changed);
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        let state = State {
            version: state::VERSION,
            apps,
        };
        let path = self.state_path.clone();
        match tokio::task::spawn_blocking(move || state::save(&path, &state)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
}

/// The app's routes after a `PUT`: each field given replaces, each left
/// out keeps (or is empty for a new app).
fn merged_spec(current: Option<&RouteSpec>, req: &PutApp) -> RouteSpec {
    let base = current.cloned().unwrap_or_default();
    RouteSpec {
        hosts: req.hosts.clone().unwrap_or(base.hosts),
        path_prefixes: req.path_prefixes.clone().unwrap_or(base.path_prefixes),
        strip_prefix: req.strip_prefix.unwrap_or(base.strip_prefix),
        default: req.default.unwrap_or(base.default),
    }
}

fn backend_of(app: &Arc<App>) -> Option<(String, BackendProtocol)> {
    app.router
        .active()
        .map(|g| (g.addr.to_string(), g.protocol()))
}

fn app_state(name: &str, spec: &RouteSpec, backend: Option<(String, BackendProtocol)>) -> AppState {
    let (backend, protocol) = match backend {
        Some((addr, protocol)) => (Some(addr), protocol),
        None => (None, BackendProtocol::Http1),
    };
    AppState {
        name: name.to_string(),
        hosts: spec.hosts.clone(),
        path_prefixes: spec.path_prefixes.clone(),
        strip_prefix: spec.strip_prefix,
        default: spec.default,
        backend,
        protocol,
    }
}

fn route_error(e: RouteError) -> Response<ProxyBody> {
    let status = match e {
        RouteError::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

fn no_such_app(name: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no app named {:?}; GET /v1/apps lists them",
            handoff_shared::clip(name)
        ),
    )
}
