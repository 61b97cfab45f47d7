//! `upgrade`'s report: the Markdown table of RESULTS.md and the chart's
//! columns, from an [`UpgradeReport`].

use super::upgrade::UpgradeReport;
use crate::report::{self, ms, table};
use crate::stats::Summary;

/// The chart's file, beside the JSON results.
pub const CHART: &str = "upgrade.svg";

/// One chart column per proxy.
pub fn panels(r: &UpgradeReport) -> Vec<crate::chart::Panel<'_>> {
    r.targets
        .iter()
        .map(|t| crate::chart::Panel {
            caption: format!(
                "{}: {} failed, {} refused, {} long cut",
                t.target, t.failed, t.refused, t.run.cut_long
            ),
            run: &t.run,
            event: "upgrade",
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    ms(v[v.len() / 2])
}

pub fn markdown(r: &UpgradeReport) -> String {
    let Some(first) = r.targets.first() else {
        return format!("### upgrade\n\nno proxy ran: {}\n", r.skipped.join("; "));
    };
    let tl = &first.run.timeline;
    let mut out = format!(
        "### upgrade ({} upgrades of each proxy, one every {} ms or when the last one ended; load: {} req/s open loop on {} keep-alive conns + {} req/s each on a new connection + {} long {} ms requests always in flight + {} HTTP/2-over-TLS clients + {} WebSocket echo clients)\n\n{}\n\n",
        first.upgrades_planned,
        tl.interval_ms,
        first.run.rate,
        first.run.conns,
        first.fresh_rate,
        first.run.long_conns,
        tl.long_ms,
        first.h2_clients,
        first.ws_clients,
        r.machine.markdown()
    );
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|t| {
            let e = &t.run.events;
            let errors = e.iter().filter(|e| e.error.is_some()).count();
            vec![
                format!("{} ({})", t.target, t.method),
                format!("{} of {}", e.len() - errors, t.upgrades_planned),
                (t.keep_alive.requests
                    + t.fresh.requests
                    + t.run.long.requests
                    + Summary::from(&t.h2).requests
                    + Summary::from(&t.ws).requests)
                    .to_string(),
                format!("**{}**", t.failed),
                format!("**{}**", t.refused),
                report::errors(&t.keep_alive.errors),
                report::errors(&t.fresh.errors),
                format!(
                    "{} ({} cut)",
                    report::errors(&t.run.long.errors),
                    t.run.cut_long
                ),
                format!(
                    "{} of {}",
                    t.h2.errors_text(),
                    t.h2.ok + t.h2.failed + t.h2.refused
                ),
                format!(
                    "{} of {} ({} closed by the proxy with a close frame)",
                    t.ws.errors_text(),
                    t.ws.ok + t.ws.failed + t.ws.refused,
                    t.ws.closed_cleanly
                ),
                median(e.iter().map(|e| e.took_ms).collect()),
                median(
                    e.iter()
                        .filter_map(|e| Some(e.took_ms + e.drain_ms? as f64))
                        .collect(),
                ),
                ms(t.run.switching.p99_ms),
            ]
        })
        .collect();
    out += &table(
        &[
            "proxy (how)",
            "upgrades done",
            "requests",
            "failed",
            "refused",
            "keep-alive failed",
            "new-connection failed",
            "long failed",
            "HTTP/2 (TLS) failed",
            "WebSocket messages failed",
            "new process serving, median ms",
            "old process gone, median ms",
            "p99 ms while upgrading",
        ],
        &rows,
    );
    out += "\nfailed: any request not answered 2xx (refused included); refused: a connection that could not be made or was closed before its first request went out. A keep-alive request that hyper never wrote because the server had closed the idle connection is resent on a new one, as clients do, and not counted failed (";
    out += &r
        .targets
        .iter()
        .map(|t| format!("{}: {} resent", t.target, t.run.resent))
        .collect::<Vec<_>>()
        .join(", ");
    out +=
        "). HTTP/2 streams that a GOAWAY said were never processed are sent again the same way (";
    out += &r
        .targets
        .iter()
        .map(|t| format!("{}: {}", t.target, t.h2.resent))
        .collect::<Vec<_>>()
        .join(", ");
    out += ").\n";
    for t in &r.targets {
        for e in t.run.events.iter().filter_map(|e| e.error.as_deref()) {
            out += &format!("\n{} upgrade error: {e}\n", t.target);
        }
        let not_drained = t
            .run
            .events
            .iter()
            .filter(|e| e.drained == Some(false))
            .count();
        if not_drained > 0 {
            out += &format!(
                "\n{}: {not_drained} old processes did not finish their requests in time\n",
                t.target
            );
        }
    }
    for s in &r.skipped {
        out += &format!("\nskipped: {s}\n");
    }
    out
}
