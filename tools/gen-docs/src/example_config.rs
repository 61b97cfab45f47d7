//! An example `--config` TOML file for handoff-proxy: every setting the flags
//! offer, with its help text, env var and default, commented out. Generated
//! rather than written by hand so that it lists exactly the flags that exist.

use clap::{ArgAction, Command};

/// Keys that cannot go in the file (the file itself, and clap's own flags).
/// `upgrade` and `background` start a hand-off: a command, not a setting.
const NOT_IN_FILE: &[&str] = &["config", "help", "version", "upgrade", "background"];

/// The marker on example lines that have no default: uncommenting those
/// needs a real value first.
pub const NO_DEFAULT: &str = "# example value; no default";

/// Renders the example for `cmd`, the proxy's command line.
pub fn render(cmd: &Command) -> String {
    let mut out = String::from(
        "# handoff-proxy configuration, for `handoff-proxy --config FILE` (or HANDOFF_CONFIG).\n\
         # Keys are the long flag names; `handoff-proxy --help` explains each.\n\
         # Precedence: command-line flag > environment variable > this file > default.\n\
         # Every setting is listed with its default, commented out. Unknown keys are errors.\n",
    );
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        out.push('\n');
        if let Some(help) = arg.get_help() {
            out.push_str(&format!("# {}\n", help.to_string().trim_end_matches('.')));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# env: {}\n", env.to_string_lossy()));
        }
        let many =
            matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| quote(&v.to_string_lossy()))
            .collect();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("#{long} = false"),
            _ if !defaults.is_empty() && many => format!("#{long} = [{}]", defaults.join(", ")),
            _ if !defaults.is_empty() => format!("#{long} = {}", defaults[0]),
            _ => {
                let placeholder = arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(|| "VALUE".to_string(), |n| n.to_string());
                let value = if many {
                    format!("[{}]", quote(&placeholder))
                } else {
                    quote(&placeholder)
                };
                format!("#{long} = {value}   {NO_DEFAULT}")
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => q.push_str(&format!("\\u{:04X}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
