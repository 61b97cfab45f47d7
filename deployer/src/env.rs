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

/// A key given with a value: anything docker accepts (no whitespace, `=`
/// or NUL, not starting with a digit).
fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && !key
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'=' || b == 0)
        && !key.as_bytes()[0].is_ascii_digit()
}

/// A bare line or `-e NAME` passes handoff's own variable through, as
/// docker's `--env-file` does; it must then look like a variable name
/// (`[A-Za-z_][A-Za-z0-9_.-]*`). Anything else (`Top$ecret!Pw`) is more
/// likely a secret pasted on the wrong line than a name.
fn bare_name_ok(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The error never quotes the text: it may be a secret.
fn check_key(key: &str, bare: bool, origin: &dyn Fn() -> String) -> Result<()> {
    if key_ok(key) && (!bare || bare_name_ok(key)) {
        return Ok(());
    }
    let what = if bare {
        "is neither KEY=VALUE nor a valid variable name (text not shown: it may be a secret)"
    } else {
        "has an invalid variable name before '=' (text not shown: it may be a secret)"
    };
    Err(Failure::Usage(format!("{} {what}", origin())))
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
    check_key(key, value.is_none(), origin)?;
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
        // A bare line that is not a name: an error naming file and line,
        // never the text (issue 13, case 8).
        std::fs::write(&file, "OK=1\nTop$ecret!Pw\n").unwrap();
        let err = build(std::slice::from_ref(&file), &[], &lookup)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app.env line 2") && !err.contains("Top$") && !err.contains("!Pw"),
            "{err}"
        );
        // Bare valid names still pass through.
        std::fs::write(&file, "FROM_HOST\nMISSING\n").unwrap();
        let env = build(std::slice::from_ref(&file), &[], &lookup).unwrap();
        assert_eq!(env.entries, vec!["FROM_HOST=host-value"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
