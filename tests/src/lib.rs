//! Helpers shared by the end-to-end tests: the real binaries, real backends on
//! 127.0.0.1, and a keep-alive load generator. Nothing here is a mock.

pub mod backend;
pub mod churn;
pub mod docker;
pub mod load;
pub mod proxy;
pub mod registry;
pub mod request;
pub mod scripted;
pub mod tls;

use std::path::{Path, PathBuf};

/// Path of a workspace binary built next to the running test executable
/// (`target/<profile>/NAME`). The first call in a test process runs
/// `cargo build --workspace --bins` for the same profile and target dir, so
/// `cargo test --workspace` alone never runs stale binaries.
pub fn bin_path(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>")
            .to_path_buf();
        let target_dir = dir.parent().expect("target dir");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "--workspace", "--bins", "--target-dir"])
            .arg(target_dir);
        if dir.file_name().is_some_and(|p| p == "release") {
            cargo.arg("--release");
        }
        let status = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
        dir
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing after cargo build",
        path.display()
    );
    path
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "handoff-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
