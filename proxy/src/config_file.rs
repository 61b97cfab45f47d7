//! `--config FILE`: a TOML file whose keys are the long flag names.
//!
//! The file is turned into extra command-line arguments for the keys that no
//! flag and no env var set, then everything is parsed again by clap. So the
//! file is validated exactly like flags are, and precedence is
//! flag > env > file > default by construction.

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// Arguments to insert before the real ones, from the file at `path`.
pub fn args_from_file(path: &Path, cmd: &Command, matches: &ArgMatches) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("config file {}: {e}", path.display()))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(long.as_str())
                && !matches!(
                    long.as_str(),
                    "config" | "help" | "version" | "upgrade" | "background"
                )
        });
        let Some(arg) = arg else {
            bail!(
                "config file {}:{}: unknown key `{key}`",
                path.display(),
                line_of(&text, key)
            );
        };
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
            other => scalar(other).map(|v| vec![v]),
        };
        let Some(values) = values else {
            bail!(
                "config file {}:{}: `{key}` must be a string, number or boolean",
                path.display(),
                line_of(&text, key)
            );
        };
        for v in values {
            if arg.get_action().takes_values() {
                args.push(OsString::from(format!("--{long}")));
                args.push(OsString::from(v));
            } else if v == "true" {
                args.push(OsString::from(format!("--{long}")));
            }
        }
    }
    Ok(args)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The 1-based line where `key` is set, for error messages.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('"');
            l.starts_with(key)
                && l[key.len()..]
                    .trim_start()
                    .trim_start_matches('"')
                    .trim_start()
                    .starts_with('=')
        })
        .map_or(0, |i| i + 1)
}
