//! `handoff`: the deploy command a CI job runs on the Docker host.
//!
//! It replaces "docker run on the free port, poll, rewrite nginx, reload,
//! docker stop" with a sequence that cannot cut a request off: the new
//! container must be healthy before the proxy switches, and the old one is
//! stopped only after the proxy reports its requests drained.
#![forbid(unsafe_code)]

mod cli;
mod cutover;
mod deploy;
mod docker;
mod env;
mod error;
mod faults;
mod health;
mod listing;
mod lock;
mod migrate;
mod output;
mod plan;
mod proxy;
mod registry_auth;
mod releases;
mod remove;
mod report;
mod rollback;
mod routes;
mod status;
mod watch;

use clap::Parser;
use cli::{Cli, Command};
use output::Output;
use report::Report;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 1,
                _ => 1,
            };
            let _ = e.print();
            // Scripts that asked for JSON get their last line even here.
            let json_asked = std::env::args().any(|a| a == "--json")
                || std::env::var("HANDOFF_JSON").is_ok_and(|v| v == "true" || v == "1");
            if code != 0 && json_asked {
                let rendered = e.render().to_string();
                let first = rendered.split("\n\nUsage").next().unwrap_or_default();
                let message = first
                    .trim()
                    .trim_start_matches("error: ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "exit_code": code, "error_kind": "usage",
                                       "error": message})
                );
            }
            std::process::exit(code);
        }
    };
    // Diagnostics for handoff's own debugging; user-facing progress goes
    // through `Output`. Off unless HANDOFF_LOG asks for it. Installed without
    // the `log` bridge on purpose: bollard logs request bodies (which hold
    // the container's env, i.e. secrets) through `log` at debug level, and
    // those must never reach any output, whatever filter is set.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);

    let out = Output::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("handoff: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut report = Report::default();
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Deploy(args) => deploy::run(&cli.global, args, &out, &mut report).await,
            Command::Rollback(args) => rollback::run(&cli.global, args, &out, &mut report).await,
            Command::Status(args) => status::run(&cli.global, args, &out, &mut report).await,
            Command::Releases(args) => status::releases(&cli.global, args, &out, &mut report).await,
            Command::List(_) => listing::run(&cli.global, &out, &mut report, "list").await,
            Command::Remove(args) => remove::run(&cli.global, args, &out, &mut report).await,
        }
    });
    let code = match &result {
        Ok(()) => 0,
        Err(failure) => {
            out.step(format!("error: {failure}"));
            failure.exit_code()
        }
    };
    let own_result = matches!(
        cli.command,
        Command::Status(_) | Command::Releases(_) | Command::List(_)
    );
    match &result {
        Ok(()) if !own_result && !matches!(cli.command, Command::Remove(_)) => {
            out.result_text(&report.success_text())
        }
        Err(f) if !own_result => out.result_text(&format!("FAILED (exit {}): {f}", f.exit_code())),
        _ => {}
    }
    out.result_json(&report.into_json(result.as_ref().err()));
    std::process::exit(code);
}
