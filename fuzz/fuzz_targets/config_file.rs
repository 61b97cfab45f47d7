//! `--config FILE` parsing: arbitrary bytes as the TOML file, turned into
//! arguments, parsed by clap and converted into the library's TLS and limit
//! settings exactly as the binary does. Errors are fine; panics are not.
#![no_main]

#[allow(dead_code)]
#[path = "../../proxy/src/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../../proxy/src/config_file.rs"]
mod config_file;

use clap::{CommandFactory, FromArgMatches};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;

fuzz_target!(|data: &[u8]| {
    // One file per fuzzing process, rewritten for every input.
    let path = std::env::temp_dir().join(format!("handoff-fuzz-config-{}.toml", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let cmd = cli::Cli::command();
    let base: Vec<OsString> = vec!["handoff-proxy".into(), "--config".into(), path.clone().into()];
    let Ok(matches) = cmd.clone().try_get_matches_from(&base) else { return };
    let Ok(extra) = config_file::args_from_file(&path, &cmd, &matches) else { return };
    let merged = base.iter().take(1).chain(&extra).chain(base.iter().skip(1));
    let Ok(matches) = cmd.try_get_matches_from(merged) else { return };
    let Ok(parsed) = cli::Cli::from_arg_matches(&matches) else { return };
    let _ = parsed.tls();
    if let Ok(limits) = parsed.limits() {
        assert!(limits.max_header_size >= 8192 && limits.max_connections >= 1);
    }
});
