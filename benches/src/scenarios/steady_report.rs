//! `steady`'s tables: each target's median round, handoff-proxy against
//! each other proxy within each round, and the wrk cross-check.

use super::steady::{median, Row, SteadyReport};
use crate::report::{self, ms, table};

pub fn markdown(r: &SteadyReport) -> String {
    let mut out = format!(
        "### steady ({:.0} s per run)\n\n{}\n\n",
        r.duration_s,
        r.machine.markdown()
    );
    // One line per (mode, conns, target): the round with the median ratio.
    let mut keys: Vec<(String, usize, String)> = Vec::new();
    for row in &r.rows {
        let key = (row.mode.clone(), row.conns, row.target.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut cells = Vec::new();
    for (mode, conns, target) in keys {
        let mut group: Vec<&Row> = r
            .rows
            .iter()
            .filter(|x| x.mode == mode && x.conns == conns && x.target == target)
            .collect();
        group.sort_by(|a, b| a.ratio.unwrap_or(0.0).total_cmp(&b.ratio.unwrap_or(0.0)));
        let row = group[group.len() / 2];
        let ratios = if group.len() > 1 {
            format!(
                " ({})",
                group
                    .iter()
                    .map(|g| format!("{:.2}", g.ratio.unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join("/")
            )
        } else {
            String::new()
        };
        let s = &row.summary;
        cells.push(vec![
            target,
            conns.to_string(),
            mode,
            format!("{:.0}", s.rps),
            row.ratio
                .map(|x| format!("{x:.2}{ratios}"))
                .unwrap_or_else(|| "-".into()),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            report::errors(&s.errors),
            row.rss_kb
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            format!(
                "{} / {:.1} / {:.1}",
                row.proxy_cpu_us
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                row.backend_cpu_us,
                row.loadgen_cpu_us
            ),
        ]);
    }
    out += &table(
        &[
            "target",
            "c",
            "load",
            "req/s",
            "ratio to direct",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "RSS MiB",
            "CPU µs/req proxy / backend / loadgen",
        ],
        &cells,
    );
    out += &paired(r);
    if !r.wrk.is_empty() {
        out += "\ncross-check against wrk (-t2, same duration):\n\n";
        let rows: Vec<Vec<String>> = r
            .wrk
            .iter()
            .map(|w| {
                vec![
                    w.target.clone(),
                    w.conns.to_string(),
                    format!("{:.0}", w.harness.rps),
                    format!("{:.0}", w.wrk.rps),
                    format!(
                        "{:.2}",
                        if w.wrk.rps > 0.0 {
                            w.harness.rps / w.wrk.rps
                        } else {
                            0.0
                        }
                    ),
                    format!("{} / {}", ms(w.harness.p50_ms), ms(w.harness.p99_ms)),
                    format!("{} / {}", ms(w.wrk.p50_ms), ms(w.wrk.p99_ms)),
                    w.wrk.errors.to_string(),
                ]
            })
            .collect();
        out += &table(
            &[
                "target",
                "c",
                "harness req/s",
                "wrk req/s",
                "harness/wrk",
                "harness p50/p99 ms",
                "wrk p50/p99 ms",
                "wrk errors",
            ],
            &rows,
        );
    }
    for m in &r.missing {
        out += &format!("\nmissing: {m}\n");
    }
    out
}

/// handoff-proxy against each other proxy round by round. The main table's
/// rows are each target's own median round, and on a noisy machine two
/// targets' medians can come from rounds the machine ran at different
/// speeds; a ratio taken within each round (both ran minutes apart, each
/// against the `direct` of that round) compares like with like. CPU per
/// request is also divided by the backend's in the same run: the backend
/// does the same work whatever proxy is in front, so that quotient takes
/// the machine's speed of the moment out.
fn paired(r: &SteadyReport) -> String {
    let mut cells = Vec::new();
    let mut modes: Vec<(String, usize)> = Vec::new();
    for row in &r.rows {
        let key = (row.mode.clone(), row.conns);
        if !modes.contains(&key) {
            modes.push(key);
        }
    }
    for (mode, conns) in modes {
        let of = |target: &str| -> Vec<&Row> {
            r.rows
                .iter()
                .filter(|x| x.mode == mode && x.conns == conns && x.target == target)
                .collect()
        };
        let ours = of("handoff");
        let mut others: Vec<&str> = Vec::new();
        for row in &r.rows {
            let t = row.target.as_str();
            if t != "handoff" && t != "direct" && !others.contains(&t) {
                others.push(t);
            }
        }
        for other in others {
            let theirs = of(other);
            let pairs: Vec<(&Row, &Row)> = ours
                .iter()
                .filter_map(|h| theirs.iter().find(|o| o.round == h.round).map(|o| (*h, *o)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let column = |f: &dyn Fn(&Row, &Row) -> Option<f64>| -> String {
                let v: Vec<f64> = pairs.iter().filter_map(|(h, o)| f(h, o)).collect();
                if v.is_empty() {
                    return "-".into();
                }
                let each = v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>();
                format!("{:.2} ({})", median(v.iter().copied()), each.join("/"))
            };
            let per_backend = |x: &Row| x.proxy_cpu_us.map(|c| c / x.backend_cpu_us.max(1e-9));
            cells.push(vec![
                other.to_string(),
                conns.to_string(),
                mode.clone(),
                column(&|h, o| Some(h.ratio? / o.ratio?)),
                column(&|h, o| Some(h.summary.p99_ms / o.summary.p99_ms)),
                column(&|h, o| Some(per_backend(h)? / per_backend(o)?)),
            ]);
        }
    }
    if cells.is_empty() {
        return String::new();
    }
    let mut out =
        "\nhandoff against each proxy within each round (median, then every round in time order; \
                   throughput above 1 and p99 and CPU below 1 favour handoff):\n\n"
            .to_string();
    out += &table(
        &[
            "vs",
            "c",
            "load",
            "req/s handoff / other",
            "p99 handoff / other",
            "CPU per backend CPU, handoff / other",
        ],
        &cells,
    );
    out
}
