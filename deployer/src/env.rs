//! The new container's environment, from `--env-file` and `-e`.
//!
//! Values are secrets as far as handoff knows: no error message, log line or
//! summary ever includes one; only keys are named.

use crate::error::{Failure, Result};
use std::path::PathBuf;

/// `KEY=VALUE` entries ready for the Engine API, plus keys that were asked
/// for by name but are unset in handoff's environment (docker skips those too).
#[derive(Debug, Default)]
pub struct ContainerEnv {
    pub entries: Vec<String>,
    pub skipped: Vec<String>,
}

impl ContainerEnv {
    pub fn keys(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect()
    }
}

fn check_key(key: &str, origin: &dyn Fn() -> String) -> Result<()> {
    let ok = !key.is_empty()
        && !key
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'=' || b == 0)
        && !key.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "{}: invalid variable name {key:?}",
            origin()
        )))
    }
}

/// Resolves one `KEY=VALUE` or `KEY` item. `lookup` reads handoff's own
/// environment (a parameter so tests need not mutate the process env).
fn resolve(
    item: &str,
    origin: &dyn Fn() -> String,
    lookup: &dyn Fn(&str) -> Option<String>,
    env: &mut ContainerEnv,
) -> Result<()> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (item, None),
    };
    check_key(key, origin)?;
    let value = match value {
        Some(v) => v,
        None => match lookup(key) {
            Some(v) => v,
            None => {
                env.skipped.push(key.to_string());
                return Ok(());
            }
        },
    };
    if value.contains('\0') {
        return Err(Failure::Usage(format!(
            "{}: the value of {key} contains a NUL byte",
            origin()
        )));
    }
    // Later definitions win, as with docker run.
    env.entries
        .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.entries.push(format!("{key}={value}"));
    Ok(())
}

pub fn build(
    env_files: &[PathBuf],
    env_args: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<ContainerEnv> {
    let mut env = ContainerEnv::default();
    for file in env_files {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Failure::Usage(format!("cannot read --env-file {}: {e}", file.display()))
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = || format!("--env-file {} line {}", file.display(), n + 1);
            resolve(line.trim_end_matches('\r'), &origin, lookup, &mut env)?;
        }
    }
    for (n, item) in env_args.iter().enumerate() {
        let origin = || format!("-e argument #{}", n + 1);
        resolve(item, &origin, lookup, &mut env)?;
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(key: &str) -> Option<String> {
        (key == "FROM_HOST").then(|| "host-value".to_string())
    }

    #[test]
    fn merges_files_and_flags_without_leaking_values() {
        let dir = std::env::temp_dir().join(format!("handoff-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.env");
        std::fs::write(&file, "# comment\n\nA=1\nB=two words\nFROM_HOST\nMISSING\n").unwrap();
        let args = vec!["A=override".to_string(), "C=x=y".to_string()];
        let env = build(std::slice::from_ref(&file), &args, &lookup).unwrap();
        assert_eq!(
            env.entries,
            vec!["B=two words", "FROM_HOST=host-value", "A=override", "C=x=y"]
        );
        assert_eq!(env.skipped, vec!["MISSING"]);
        assert_eq!(env.keys(), vec!["B", "FROM_HOST", "A", "C"]);

        std::fs::write(&file, "OK=1\nBAD KEY=supersecret\n").unwrap();
        let err = build(std::slice::from_ref(&file), &[], &lookup)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && !err.contains("supersecret"),
            "{err}"
        );
        let err = build(&[], &["=supersecret".into()], &lookup)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("-e argument #1") && !err.contains("supersecret"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
