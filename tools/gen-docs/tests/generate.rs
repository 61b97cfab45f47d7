//! Generation writes, for both binaries, man pages that document every flag
//! (with its env var) and completions that offer every flag.

use clap::Command;
use std::path::{Path, PathBuf};

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handoff-gen-docs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every visible long flag of `cmd` and, recursively, of its subcommands,
/// with the page it must appear on and its env var.
fn flags(cmd: &Command, page: &str, into: &mut Vec<(String, String, Option<String>)>) {
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            into.push((page.to_string(), long.to_string(), env));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        flags(sub, &format!("{page}-{}", sub.get_name()), into);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn man_pages_document_every_flag_and_env_var() {
    let out = out_dir("man");
    let written = handoff_gen_docs::generate(&out).unwrap();
    let names: Vec<_> = written
        .man_pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "handoff-proxy.1",
        "handoff.1",
        "handoff-deploy.1",
        "handoff-rollback.1",
        "handoff-status.1",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not generated; got {names:?}"
        );
    }

    let mut all = Vec::new();
    for mut cmd in handoff_gen_docs::commands() {
        cmd.build();
        let name = cmd.get_name().to_string();
        flags(&cmd, &name, &mut all);
    }
    // Sanity: the walk found the flags both binaries are known to have.
    for (page, long) in [
        ("handoff-proxy", "drain-timeout"),
        ("handoff-deploy", "health-path"),
        ("handoff-deploy", "env-file"),
    ] {
        assert!(
            all.iter().any(|(p, l, _)| p == page && l == long),
            "{page} --{long} not seen"
        );
    }
    assert!(all.len() > 20, "only {} flags found", all.len());

    for (page, long, env) in &all {
        let text = read(&out.join("man").join(format!("{page}.1")));
        assert!(text.len() > 500, "{page}.1 is nearly empty");
        // roff escapes '-' as '\-' in option names.
        let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
        assert!(
            text.contains(&escaped),
            "{page}.1 does not mention --{long}"
        );
        if let Some(env) = env {
            assert!(
                text.contains(env.as_str()),
                "{page}.1 does not mention {env} (for --{long})"
            );
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn completions_offer_every_flag() {
    let out = out_dir("completions");
    let written = handoff_gen_docs::generate(&out).unwrap();
    assert_eq!(
        written.completions.len(),
        10,
        "5 shells x 2 binaries: {:?}",
        written.completions
    );
    let bash = |bin: &str| read(&out.join("completions").join(format!("{bin}.bash")));
    let fish = |bin: &str| read(&out.join("completions").join(format!("{bin}.fish")));
    for mut cmd in handoff_gen_docs::commands() {
        cmd.build();
        let bin = cmd.get_name().to_string();
        let mut all = Vec::new();
        flags(&cmd, &bin, &mut all);
        let (bash, fish) = (bash(&bin), fish(&bin));
        for (_, long, _) in all {
            assert!(
                bash.contains(&format!("--{long}")),
                "{bin}.bash lacks --{long}"
            );
            assert!(
                fish.contains(&format!("-l {long}")),
                "{bin}.fish lacks --{long}"
            );
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}
