//! Prometheus metrics. Handles for per-request series are created once, so
//! the request path only touches atomics.

use crate::histogram::AtomicHistogram;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

/// Why a request to a backend failed, as counted in `upstream_errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Reset,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
        }
    }
}

/// One app's request counters, made once when the app is created: a
/// request routed to it only increments them (and the access log names it).
pub struct AppCounters {
    pub name: std::sync::Arc<str>,
    /// By status class: 1xx at 0 .. 5xx at 4.
    requests: [Counter; 5],
}

/// One backend generation's in-flight count, as a scrape reports it.
pub struct InFlightSeries {
    pub app: std::sync::Arc<str>,
    pub generation: u64,
    pub backend: String,
    /// `active` or `draining`.
    pub state: &'static str,
    pub in_flight: u64,
}

pub struct Metrics {
    registry: Registry,
    /// Indexed by status class: 1xx at 0 .. 5xx at 4.
    requests: [Counter; 5],
    /// The same by app; each app keeps handles to its own series
    /// ([`Metrics::app_counters`]). Only app names become labels, never a
    /// host a client sent.
    app_requests: Family<Labels, Counter>,
    duration: AtomicHistogram,
    switches: Counter,
    drains: Family<Labels, Counter>,
    drain_duration: Histogram,
    upstream_errors: Family<Labels, Counter>,
    tls_handshakes: Family<Labels, Counter>,
    in_flight: Family<Labels, Gauge>,
    process_generation: Gauge,
    handoffs: Family<Labels, Counter>,
    /// Scrapes rebuild the in-flight series; one at a time.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("handoff");
        let requests_family = Family::<Labels, Counter>::default();
        let requests = std::array::from_fn(|i| {
            requests_family.get_or_create_owned(&vec![("class", format!("{}xx", i + 1))])
        });
        registry.register(
            "requests",
            "Requests answered, by status class",
            requests_family,
        );
        let app_requests = Family::<Labels, Counter>::default();
        registry.register(
            "app_requests",
            "Requests answered, by app and status class",
            app_requests.clone(),
        );
        let duration = AtomicHistogram::new(exponential_buckets(0.0005, 2.0, 18));
        registry.register(
            "request_duration_seconds",
            "Time from request head to the last response byte",
            duration.clone(),
        );
        let switches = Counter::default();
        registry.register("switches", "Backend switches", switches.clone());
        let drains = Family::<Labels, Counter>::default();
        registry.register(
            "drains",
            "Drains after a switch, by outcome (drained, timeout)",
            drains.clone(),
        );
        let drain_duration = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "drain_duration_seconds",
            "How long a switch waited for older generations",
            drain_duration.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed backend requests, by kind (connect, timeout, reset)",
            upstream_errors.clone(),
        );
        let tls_handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result (ok, error)",
            tls_handshakes.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "in_flight",
            "Requests in flight, by app and backend generation",
            in_flight.clone(),
        );
        let process_generation = Gauge::default();
        registry.register(
            "process_generation",
            "This process's generation: 1 when started afresh, one more at each hand-off to a new process",
            process_generation.clone(),
        );
        let handoffs = Family::<Labels, Counter>::default();
        registry.register(
            "handoffs",
            "Hand-offs of the listening sockets to a new process, by outcome (completed, abandoned)",
            handoffs.clone(),
        );
        Metrics {
            registry,
            requests,
            app_requests,
            duration,
            switches,
            drains,
            drain_duration,
            upstream_errors,
            tls_handshakes,
            in_flight,
            process_generation,
            handoffs,
            scrape: Mutex::new(()),
        }
    }

    /// One request answered; `app` is the routed app's series, `None` for
    /// a request no app took (404, loop, refused before routing).
    pub fn request_done(&self, app: Option<&AppCounters>, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        if let Some(app) = app {
            app.requests[class].inc();
        }
        self.duration.observe(elapsed);
    }

    /// Handles to the series of one app, one per status class.
    pub fn app_counters(&self, app: &str) -> std::sync::Arc<AppCounters> {
        std::sync::Arc::new(AppCounters {
            name: app.into(),
            requests: std::array::from_fn(|i| {
                self.app_requests.get_or_create_owned(&vec![
                    ("app", app.to_string()),
                    ("class", format!("{}xx", i + 1)),
                ])
            }),
        })
    }

    /// Drops the series of a removed app.
    pub fn forget_app(&self, app: &str) {
        for i in 0..5 {
            self.app_requests.remove(&vec![
                ("app", app.to_string()),
                ("class", format!("{}xx", i + 1)),
            ]);
        }
    }

    pub fn set_process_generation(&self, generation: u64) {
        self.process_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// A hand-off this process offered ended (`completed` or `abandoned`).
    pub fn handoff(&self, outcome: &'static str) {
        self.handoffs
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub fn switched(&self) {
        self.switches.inc();
    }

    pub fn drain_done(&self, drained: bool, waited: Duration) {
        let outcome = if drained { "drained" } else { "timeout" };
        self.drains
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.drain_duration.observe(waited.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors
            .get_or_create(&vec![("kind", kind.label().to_string())])
            .inc();
    }

    pub fn tls_handshake(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_handshakes
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// The Prometheus text exposition, with in-flight counts read from the
    /// router at this instant.
    /// `in_flight` is every app's generations at this instant (the admin
    /// endpoint reads them from the apps).
    pub fn render(&self, in_flight: &[InFlightSeries]) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.in_flight.clear();
        for g in in_flight {
            let labels = vec![
                ("generation", g.generation.to_string()),
                ("backend", g.backend.clone()),
                ("state", g.state.to_string()),
                ("app", g.app.to_string()),
            ];
            self.in_flight
                .get_or_create(&labels)
                .set(i64::try_from(g.in_flight).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
