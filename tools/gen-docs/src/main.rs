//! `cargo run -p handoff-gen-docs [-- OUT_DIR]`: writes man pages to
//! `OUT_DIR/man`, shell completions to `OUT_DIR/completions` and an example
//! proxy config to `OUT_DIR/config/handoff-proxy.toml`.
//! OUT_DIR defaults to the build directory (`$CARGO_TARGET_DIR`, else `target/`
//! at the workspace root), so nothing generated lands in the source tree.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let out = match (args.next(), args.next()) {
        (Some(a), None) if a == "-h" || a == "--help" => {
            println!(
                "usage: gen-docs [OUT_DIR]   (default: $CARGO_TARGET_DIR or <workspace>/target)"
            );
            return ExitCode::SUCCESS;
        }
        (Some(dir), None) => PathBuf::from(dir),
        (None, _) => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                manifest
                    .ancestors()
                    .nth(2)
                    .unwrap_or(manifest)
                    .join("target")
            }),
        _ => {
            eprintln!("gen-docs: expected at most one argument, the output directory");
            return ExitCode::from(1);
        }
    };
    match handoff_gen_docs::generate(&out) {
        Ok(written) => {
            for path in written
                .man_pages
                .iter()
                .chain(&written.completions)
                .chain(&written.config_examples)
            {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-docs: cannot write to {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}
