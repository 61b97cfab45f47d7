//! Man pages and shell completions for `handoff-proxy` and `handoff`, rendered
//! from the very clap definitions the binaries parse with.
//!
//! Each binary keeps its command line in a `cli.rs` module of the binary (not
//! of its library), so the proxy and deployer cores stay free of this. We
//! compile those same files here as modules of our own, which means the docs
//! cannot drift from the flags: a new flag shows up the next time this runs.
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

/// The proxy's package description, for the bare `#[command(about)]` case:
/// clap fills that in from the *compiling* crate's metadata, which here would
/// be ours, not the proxy's.
const PROXY_DESCRIPTION: &str =
    "The front door: atomic backend switch, drain, Unix-socket control API";

/// The two top-level commands, exactly as their binaries build them.
pub fn commands() -> Vec<Command> {
    let mut proxy = proxy_cli::Cli::command();
    if proxy.get_about().map(|a| a.to_string()).as_deref() == Some(env!("CARGO_PKG_DESCRIPTION")) {
        proxy = proxy.about(PROXY_DESCRIPTION);
    }
    vec![proxy, deployer_cli::Cli::command()]
}

/// What one run wrote, for the caller to report.
#[derive(Debug, Default)]
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes `OUT/man/*.1` (one page per command and subcommand, e.g.
/// `handoff-deploy.1`) and `OUT/completions/*` for bash, zsh, fish,
/// elvish and PowerShell.
pub fn generate(out: &Path) -> io::Result<Written> {
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completion_dir)?;
    let mut written = Written::default();
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
