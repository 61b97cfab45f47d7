//! `routes`: what the route table (issue 14) costs on the request path.
//!
//! handoff-proxy with a table of many apps (a host each, every fourth app on
//! two path prefixes of its host instead of the whole host, all to the same
//! backend) against handoff-proxy with one app (`--backend`, the default
//! app, which is how it ran before the table existed), under `steady`'s
//! closed-loop keep-alive load whose connections are dealt out over several
//! apps' hosts. nginx with a `server` block per host, against nginx with
//! its one catch-all server, is the anchor: the same two set-ups on the
//! proxy everyone knows. All four, and `direct`, run in each round, and the
//! ratios that matter are taken within the round.

use super::steady::{measure_all, RequestKind, Row, Server, Target};
use super::{blocking, unavailable, Common};
use crate::loadgen::Mode;
use crate::procs::{find_tool, Backend};
use crate::report::{self, ms, table, Machine};
use crate::servers::{missing_nginx, HandoffProxy, Nginx, NginxHost};
use anyhow::{bail, Context, Result};
use handoff_shared::{ControlClient, PutApp};
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct RoutesArgs {
    /// Connection counts to run (closed loop; smoke: the first only).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub conns: Vec<usize>,
    /// Interleaved rounds; the within-round ratios are reported per round.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Apps in the table (and nginx `server` blocks).
    #[arg(long, default_value_t = 100)]
    pub apps: usize,
    /// Apps the load's connections are spread over (half on a prefix).
    #[arg(long, default_value_t = 8)]
    pub hosts: usize,
}

impl Default for RoutesArgs {
    fn default() -> Self {
        RoutesArgs {
            conns: vec![64, 256],
            rounds: 1,
            apps: 100,
            hosts: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesReport {
    pub machine: Machine,
    pub duration_s: f64,
    pub apps: usize,
    /// The requests of the load, `host path`, connections dealt out evenly.
    pub requests: Vec<String>,
    pub rows: Vec<Row>,
    pub missing: Vec<String>,
}

/// One app of the table.
#[derive(Debug, Clone)]
struct App {
    name: String,
    host: String,
    /// Empty: the whole host.
    prefixes: Vec<String>,
}

/// `apps` apps, `app000.bench.test` ...; every fourth (i % 4 == 1) claims
/// `/api` and `/v{i}` of its host rather than the whole host.
fn app_table(apps: usize) -> Vec<App> {
    (0..apps)
        .map(|i| App {
            name: format!("app{i:03}"),
            host: format!("app{i:03}.bench.test"),
            prefixes: if i % 4 == 1 {
                vec!["/api".into(), format!("/v{i}")]
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// `hosts` apps spread over the table, alternately whole-host and
/// prefixed; a prefixed app is asked for a path below its `/api`.
fn load_kinds(table: &[App], hosts: usize) -> Vec<RequestKind> {
    let n = table.len();
    let hosts = hosts.clamp(1, n.max(1));
    (0..hosts)
        .filter_map(|k| {
            let want_prefixed = k % 2 == 1;
            (k * n / hosts..n)
                .chain(0..n)
                .map(|i| &table[i])
                .find(|a| a.prefixes.is_empty() != want_prefixed)
        })
        .map(|app| RequestKind {
            host: Some(HeaderValue::from_str(&app.host).expect("generated host names are valid")),
            path: if app.prefixes.is_empty() {
                "/".into()
            } else {
                "/api/items".into()
            },
        })
        .collect()
}

pub async fn run(common: &Common, args: &RoutesArgs) -> Result<RoutesReport> {
    let machine = Machine::probe();
    let table_apps = app_table(args.apps.max(1));
    let kinds = load_kinds(&table_apps, args.hosts);
    let backend = blocking(|| Backend::start(1, 0)).await?;
    let addr = backend.addr;
    let mut missing = Vec::new();
    let mut targets = vec![Target {
        name: "direct",
        addr,
        server: Server::Direct,
    }];
    start_handoff(&mut targets, &mut missing, addr, &table_apps).await?;
    start_nginx(&mut targets, &mut missing, addr.port(), &table_apps).await?;

    let conns: Vec<usize> = if common.smoke {
        args.conns.iter().take(1).copied().collect()
    } else {
        args.conns.clone()
    };
    let mut rows = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Odd rounds run each pair the other way round, so a machine that
        // speeds up or slows down during a round does not favour one side.
        let mut order: Vec<&Target> = targets.iter().collect();
        if round % 2 == 1 {
            order[1..].reverse();
        }
        for &c in &conns {
            measure_all(
                common,
                &backend,
                &order,
                &kinds,
                c,
                Mode::Closed,
                round,
                &mut rows,
            )
            .await;
        }
    }
    drop(targets);
    drop(backend);
    Ok(RoutesReport {
        machine,
        duration_s: common.duration.as_secs_f64(),
        apps: table_apps.len(),
        requests: kinds
            .iter()
            .map(|k| {
                let host = k.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-");
                format!("{host} {}", k.path)
            })
            .collect(),
        rows,
        missing,
    })
}

/// handoff-proxy twice: with one (default) app, and with the whole table
/// put over the control socket, no default app.
async fn start_handoff(
    targets: &mut Vec<Target>,
    missing: &mut Vec<String>,
    backend: SocketAddr,
    apps: &[App],
) -> Result<()> {
    if let Err(e) = HandoffProxy::binary() {
        missing.push(unavailable(e.to_string())?);
        return Ok(());
    }
    let single = blocking(move || HandoffProxy::start(backend, "30s")).await?;
    targets.push(Target {
        name: "handoff-single",
        addr: single.addr,
        server: Server::Handoff(single),
    });
    let routed = blocking(|| HandoffProxy::start_with(None, "30s")).await?;
    let client = ControlClient::new(&routed.control);
    for app in apps {
        let req = PutApp {
            hosts: Some(vec![app.host.clone()]),
            path_prefixes: Some(app.prefixes.clone()),
            backend: Some(backend.to_string()),
            ..PutApp::default()
        };
        client
            .put_app(&app.name, &req)
            .await
            .with_context(|| format!("PUT /v1/apps/{} (log: {})", app.name, routed.log_tail()))?;
    }
    targets.push(Target {
        name: "handoff-table",
        addr: routed.addr,
        server: Server::Handoff(routed),
    });
    Ok(())
}

/// nginx twice: its one catch-all server, and a `server` block per app.
async fn start_nginx(
    targets: &mut Vec<Target>,
    missing: &mut Vec<String>,
    backend_port: u16,
    apps: &[App],
) -> Result<()> {
    if find_tool("nginx").is_none() {
        missing.push(unavailable(missing_nginx())?);
        return Ok(());
    }
    let single = blocking(move || Nginx::start(backend_port)).await?;
    targets.push(Target {
        name: "nginx-single",
        addr: single.addr,
        server: Server::Nginx(single),
    });
    let hosts: Vec<NginxHost> = apps
        .iter()
        .map(|a| NginxHost {
            host: a.host.clone(),
            prefixes: a.prefixes.clone(),
        })
        .collect();
    let routed = blocking(move || Nginx::start_routes(backend_port, &hosts)).await?;
    targets.push(Target {
        name: "nginx-table",
        addr: routed.addr,
        server: Server::Nginx(routed),
    });
    Ok(())
}

/// A run that routed nothing, or answered any request with a non-5xx error
/// (a 404 means a request missed its app), proves nothing.
pub fn check(r: &RoutesReport) -> Result<()> {
    for row in &r.rows {
        if row.summary.ok == 0 {
            bail!(
                "routes: {} c={} counted no successful request",
                row.target,
                row.conns
            );
        }
        if let Some(n) = row.summary.errors.get("http_other").filter(|n| **n > 0) {
            bail!(
                "routes: {} c={} answered {n} requests with a 4xx: the table misroutes",
                row.target,
                row.conns
            );
        }
    }
    Ok(())
}

/// The pairs the scenario is for: (label, numerator, denominator).
const PAIRS: [(&str, &str, &str); 4] = [
    (
        "handoff: table / single app",
        "handoff-table",
        "handoff-single",
    ),
    (
        "nginx: table / single server",
        "nginx-table",
        "nginx-single",
    ),
    ("table: handoff / nginx", "handoff-table", "nginx-table"),
    ("single: handoff / nginx", "handoff-single", "nginx-single"),
];

pub fn markdown(r: &RoutesReport) -> String {
    let mut out = format!(
        "### routes ({:.0} s per run, {} apps)\n\n{}\n\nrequests (connections dealt out evenly): {}\n\n",
        r.duration_s,
        r.apps,
        r.machine.markdown(),
        r.requests
            .iter()
            .map(|q| format!("`{q}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out += &targets_table(r);
    out += "\nwithin each round (median, then every round in time order; throughput \
            above 1 and p99 and CPU below 1 favour the first named):\n\n";
    out += &pairs_table(r);
    for m in &r.missing {
        out += &format!("\nmissing: {m}\n");
    }
    out
}

/// Each target's round with the median ratio to direct.
fn targets_table(r: &RoutesReport) -> String {
    let mut keys: Vec<(usize, String)> = Vec::new();
    for row in &r.rows {
        let key = (row.conns, row.target.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut cells = Vec::new();
    for (conns, target) in keys {
        let mut group: Vec<&Row> = r
            .rows
            .iter()
            .filter(|x| x.conns == conns && x.target == target)
            .collect();
        group.sort_by(|a, b| a.ratio.unwrap_or(0.0).total_cmp(&b.ratio.unwrap_or(0.0)));
        let row = group[group.len() / 2];
        let each = group
            .iter()
            .map(|g| format!("{:.2}", g.ratio.unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join("/");
        let s = &row.summary;
        cells.push(vec![
            target,
            conns.to_string(),
            format!("{:.0}", s.rps),
            format!("{:.2} ({each})", row.ratio.unwrap_or(0.0)),
            ms(s.p50_ms),
            ms(s.p99_ms),
            report::errors(&s.errors),
            format!(
                "{} / {:.1}",
                row.proxy_cpu_us
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                row.backend_cpu_us
            ),
        ]);
    }
    table(
        &[
            "target",
            "c",
            "req/s",
            "ratio to direct",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU µs/req proxy / backend",
        ],
        &cells,
    )
}

/// The four comparisons, each taken within a round.
fn pairs_table(r: &RoutesReport) -> String {
    let mut conns: Vec<usize> = Vec::new();
    for row in &r.rows {
        if !conns.contains(&row.conns) {
            conns.push(row.conns);
        }
    }
    let mut cells = Vec::new();
    for c in conns {
        for (label, a, b) in PAIRS {
            let of = |t: &str| -> Vec<&Row> {
                r.rows
                    .iter()
                    .filter(|x| x.conns == c && x.target == t)
                    .collect()
            };
            let theirs = of(b);
            let pairs: Vec<(&Row, &Row)> = of(a)
                .into_iter()
                .filter_map(|x| theirs.iter().find(|y| y.round == x.round).map(|y| (x, *y)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let column = |f: &dyn Fn(&Row, &Row) -> Option<f64>| -> String {
                let v: Vec<f64> = pairs.iter().filter_map(|(x, y)| f(x, y)).collect();
                if v.is_empty() {
                    return "-".into();
                }
                let each = v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>();
                format!("{:.2} ({})", median(&v), each.join("/"))
            };
            let per_backend = |x: &Row| x.proxy_cpu_us.map(|p| p / x.backend_cpu_us.max(1e-9));
            cells.push(vec![
                label.to_string(),
                c.to_string(),
                column(&|x, y| Some(x.summary.rps / y.summary.rps.max(1e-9))),
                column(&|x, y| Some(x.summary.p99_ms / y.summary.p99_ms.max(1e-9))),
                column(&|x, y| Some(x.proxy_cpu_us? / y.proxy_cpu_us?)),
                column(&|x, y| Some(per_backend(x)? / per_backend(y)?)),
            ]);
        }
    }
    table(
        &[
            "pair",
            "c",
            "req/s",
            "p99",
            "CPU µs/req",
            "CPU per backend CPU",
        ],
        &cells,
    )
}

/// The middle value, or the mean of the middle two: with the two rounds a
/// short run has, picking one of them would report the better or the worse.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{app_table, load_kinds, median};

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[1.2, 0.8]), 1.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn load_spreads_over_whole_host_and_prefixed_apps() {
        let table = app_table(100);
        assert_eq!(table.iter().filter(|a| !a.prefixes.is_empty()).count(), 25);
        let kinds = load_kinds(&table, 8);
        assert_eq!(kinds.len(), 8);
        let prefixed = kinds.iter().filter(|k| k.path == "/api/items").count();
        assert_eq!(prefixed, 4);
        let mut hosts: Vec<_> = kinds.iter().map(|k| k.host.clone().unwrap()).collect();
        hosts.dedup();
        assert_eq!(hosts.len(), 8, "every request kind names its own app");
    }
}
