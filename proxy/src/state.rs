//! The active backend, persisted so a restart (or a crash) comes back routing
//! where it was. Written temp + fsync + rename + fsync(dir): a reader sees the
//! old file or the new one, never half of one.

use handoff_shared::BackendProtocol;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({source}); fix or remove it, the proxy will not guess")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} names an invalid backend: {why}")]
    BadBackend { path: PathBuf, why: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub backend: Option<String>,
    /// What the backend speaks. Absent in state files written before
    /// backends had a protocol (they were all HTTP/1.1), and left out when
    /// `http1`, so an older proxy can still read what this one wrote.
    #[serde(default, skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
}

/// A missing file is an empty state (first start); anything unreadable is an error.
pub fn load(path: &Path) -> Result<State, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.into(),
        source,
    })?;
    if let Some(addr) = &state.backend {
        handoff_shared::parse_backend_addr(addr).map_err(|why| StateError::BadBackend {
            path: path.into(),
            why,
        })?;
    }
    Ok(state)
}

pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("state.json");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        let mut json = serde_json::to_vec_pretty(state).expect("state serialises");
        json.push(b'\n');
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("handoff-state-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        assert_eq!(load(&path).unwrap(), State::default());
        let s = State {
            backend: Some("127.0.0.1:8081".into()),
            protocol: BackendProtocol::Http1,
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        let h2c = State {
            backend: Some("127.0.0.1:8082".into()),
            protocol: BackendProtocol::H2c,
        };
        save(&path, &h2c).unwrap();
        assert_eq!(load(&path).unwrap(), h2c);
        // A file from before backends had a protocol.
        fs::write(&path, br#"{"backend":"127.0.0.1:8083"}"#).unwrap();
        assert_eq!(load(&path).unwrap().protocol, BackendProtocol::Http1);
        fs::write(&path, br#"{"backend":"127.0.0.1:8083","protocol":"h3"}"#).unwrap();
        assert!(load(&path).is_err());
        fs::write(&path, b"{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
        fs::write(&path, br#"{"backend":"nope"}"#).unwrap();
        assert!(load(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
