//! Man pages and shell completions for `handoff-proxy` and `handoff`, rendered
//! from the very clap definitions the binaries parse with.
//!
//! Each binary keeps its command line in a `cli.rs` module of the binary (not
//! of its library), so the proxy and deployer cores stay free of this. We
//! compile those same files here as modules of our own, which means the docs
//! cannot drift from the flags: a new flag shows up the next time this runs.
//! (So those files may use clap, std, `handoff_shared` and `handoff_proxy`,
//! but not `crate::` items of their binaries.)
#![forbid(unsafe_code)]

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::io;
use std::path::{Path, PathBuf};

#[allow(dead_code)] // only the clap definition is used here, not the parsing helpers
#[path = "../../../proxy/src/cli.rs"]
mod proxy_cli;

#[allow(dead_code)]
#[path = "../../../deployer/src/cli.rs"]
mod deployer_cli;

pub mod example_config;

/// A bare `#[command(about)]` (or `version`) is filled in by clap from the
/// *compiling* crate's metadata, which here would be ours. So such values are
/// swapped for the binary's own, read from its Cargo.toml at compile time.
fn with_own_metadata(cmd: Command, manifest: &'static str) -> Command {
    let field = |name: &str| {
        manifest.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.trim_start().strip_prefix('=')?.trim();
            rest.strip_prefix('"')?.strip_suffix('"')
        })
    };
    let mut cmd = cmd;
    if cmd.get_about().map(|a| a.to_string()).as_deref() == Some(env!("CARGO_PKG_DESCRIPTION")) {
        if let Some(description) = field("description") {
            cmd = cmd.about(description);
        }
    }
    // Versions come from the workspace, shared by every crate, unless a
    // binary sets its own.
    if let Some(version) = field("version") {
        cmd = cmd.version(version);
    }
    cmd
}

/// The two top-level commands, exactly as their binaries build them.
pub fn commands() -> Vec<Command> {
    vec![
        with_own_metadata(
            proxy_cli::Cli::command(),
            include_str!("../../../proxy/Cargo.toml"),
        ),
        with_own_metadata(
            deployer_cli::Cli::command(),
            include_str!("../../../deployer/Cargo.toml"),
        ),
    ]
}

/// What one run wrote, for the caller to report.
#[derive(Debug, Default)]
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
    pub config_examples: Vec<PathBuf>,
}

/// The proxy's command, as its binary builds it.
pub fn proxy_command() -> Command {
    commands().swap_remove(0)
}

/// Writes `OUT/man/*.1` (one page per command and subcommand, e.g.
/// `handoff-deploy.1`), `OUT/completions/*` for bash, zsh, fish, elvish
/// and PowerShell, and `OUT/config/handoff-proxy.toml`, an example
/// `--config` file listing every setting.
pub fn generate(out: &Path) -> io::Result<Written> {
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    let config_dir = out.join("config");
    for dir in [&man_dir, &completion_dir, &config_dir] {
        std::fs::create_dir_all(dir)?;
    }
    let mut written = Written::default();
    let config = config_dir.join("handoff-proxy.toml");
    std::fs::write(&config, example_config::render(&proxy_command()))?;
    written.config_examples.push(config);
    for cmd in commands() {
        // `build` propagates globals and versions into subcommands, so each
        // subcommand page lists the global flags it accepts too.
        let mut cmd = cmd;
        cmd.build();
        write_man_pages(&cmd, &man_dir, &mut written.man_pages)?;
        let bin = cmd.get_name().to_string();
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let path = clap_complete::generate_to(shell, &mut cmd, &bin, &completion_dir)?;
            written.completions.push(path);
        }
    }
    Ok(written)
}

/// One page for `cmd`, then one per visible subcommand. After `build`,
/// a subcommand's display name is `handoff-deploy`, which is both the page
/// title and the file name `man handoff-deploy` looks for.
fn write_man_pages(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The example config is only useful if the proxy accepts it: load it, with
/// every defaulted line uncommented, through the proxy's own `--config` code.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../proxy/src/config_file.rs"]
mod proxy_config_file;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    #[test]
    fn example_config_is_accepted_by_the_proxy() {
        let cmd = proxy_cli::Cli::command();
        let example = example_config::render(&cmd);
        let mut uncommented = String::new();
        let mut keys = 0;
        for line in example.lines() {
            match line.strip_prefix('#') {
                Some(setting)
                    if setting.contains(" = ") && !setting.contains(example_config::NO_DEFAULT) =>
                {
                    uncommented.push_str(setting);
                    keys += 1;
                }
                _ => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        assert!(
            keys >= 10,
            "only {keys} settings with defaults in:\n{example}"
        );
        for long in ["http", "control", "drain-timeout", "admin", "state"] {
            assert!(
                uncommented.contains(&format!("\n{long} = ")),
                "{long} missing:\n{uncommented}"
            );
        }

        let dir =
            std::env::temp_dir().join(format!("handoff-gen-docs-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let argv = ["handoff-proxy", "--config", path.to_str().unwrap()];
        let matches = cmd.clone().try_get_matches_from(argv).unwrap();
        let from_file = proxy_config_file::args_from_file(&path, &cmd, &matches)
            .unwrap_or_else(|e| panic!("the proxy rejects the example: {e:#}\n{uncommented}"));
        assert!(
            from_file.len() >= 2 * keys - 4,
            "few settings taken from the file: {from_file:?}"
        );
        let merged = argv
            .iter()
            .take(1)
            .map(Into::into)
            .chain(from_file)
            .chain(argv.iter().skip(1).map(Into::into));
        let matches = cmd
            .try_get_matches_from(merged.collect::<Vec<std::ffi::OsString>>())
            .unwrap();
        let cli = proxy_cli::Cli::from_arg_matches(&matches).unwrap();
        cli.tls().unwrap();
        cli.limits().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn descriptions_are_the_binaries_own() {
        for cmd in commands() {
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.is_empty(), "{} has no description", cmd.get_name());
            assert_ne!(
                about,
                env!("CARGO_PKG_DESCRIPTION"),
                "{} shows gen-docs' description",
                cmd.get_name()
            );
        }
    }

    #[test]
    fn a_mistyped_key_in_the_example_would_be_caught() {
        // Guards the test above: the loader really checks keys.
        let cmd = proxy_cli::Cli::command();
        let dir =
            std::env::temp_dir().join(format!("handoff-gen-docs-badkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(&path, "http = \"127.0.0.1:8080\"\ndrain-timout = \"5s\"\n").unwrap();
        let matches = cmd.clone().try_get_matches_from(["handoff-proxy"]).unwrap();
        let err = proxy_config_file::args_from_file(&path, &cmd, &matches).unwrap_err();
        assert!(format!("{err:#}").contains("drain-timout"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
