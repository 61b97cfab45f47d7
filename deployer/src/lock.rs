//! One deploy per app at a time.
//!
//! An advisory `flock` on `STATE_DIR/locks/APP.lock`: the kernel drops it when
//! the holder exits, however it exits, so a crashed deploy never leaves a lock
//! someone has to delete by hand. The file's content only names the holder
//! for the error message of whoever is refused.

use crate::error::{Failure, Result};
use crate::output::Output;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct AppLock {
    file: File,
}

impl Drop for AppLock {
    fn drop(&mut self) {
        // So a stale name is never mistaken for a holder; the kernel
        // releases the lock itself when the file closes.
        let _ = self.file.set_len(0);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "an unknown process (it has not written its name yet)".into()
    } else {
        text.to_string()
    }
}

/// Takes the lock for `app`, failing at once when it is held unless `wait`.
pub fn acquire(
    state_dir: &Path,
    app: &str,
    what: &str,
    wait: bool,
    out: &Output,
) -> Result<AppLock> {
    let dir = state_dir.join("locks");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::Usage(format!(
            "cannot create the lock directory {} ({e}); set --state-dir or HANDOFF_STATE_DIR to a writable directory",
            dir.display()
        ))
    })?;
    let path = dir.join(format!("{app}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Failure::Usage(format!("cannot open the lock file {}: {e}", path.display()))
        })?;
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                if !wait {
                    return Err(Failure::Usage(format!(
                        "another deploy of {app} is running: {holder} holds {} (use --wait-lock to wait for it)",
                        path.display()
                    )));
                }
                if !announced {
                    out.step(format!("waiting for the lock on {app}, held by {holder}"));
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Failure::Usage(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    let holder = format!(
        "pid {} on {} ({what}, since {since})",
        std::process::id(),
        hostname()
    );
    // Best effort: the lock itself is what matters, the text is for people.
    let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| {
        file.write_all(holder.as_bytes())?;
        file.flush()
    });
    Ok(AppLock { file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_name() {
        let dir = std::env::temp_dir().join(format!("handoff-lock-test-{}", std::process::id()));
        let out = Output::new(false);
        let first = acquire(&dir, "shop", "deploy shop:1", false, &out).unwrap();
        let err = acquire(&dir, "shop", "deploy shop:2", false, &out).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("deploy shop:1"), "{msg}");
        assert_eq!(err.exit_code(), 1);
        // Another app is independent.
        let _other = acquire(&dir, "blog", "deploy blog:1", false, &out).unwrap();
        drop(first);
        let _again = acquire(&dir, "shop", "deploy shop:3", false, &out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
