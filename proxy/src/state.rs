//! Every app's routes and active backend, persisted so a restart (or a
//! crash) comes back routing where it was. Written temp + fsync + rename + fsync(dir): a reader sees the
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

/// Every app the proxy routes, as a restart brings it back. Schema
/// version 2; a version-1 file (one `backend`, from before apps) is read as
/// one default app named [`handoff_shared::DEFAULT_APP`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub apps: Vec<AppState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: VERSION,
            apps: Vec::new(),
        }
    }
}

/// The schema this proxy writes.
pub const VERSION: u32 = 2;

/// One app: its routes and its active backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub default: bool,
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
}

/// The state file before apps: one backend.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateV1 {
    backend: Option<String>,
    #[serde(default)]
    protocol: BackendProtocol,
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
    let corrupt = |source| StateError::Corrupt {
        path: path.into(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
    let state = if value.get("version").is_some() {
        serde_json::from_value::<State>(value).map_err(corrupt)?
    } else {
        migrate(serde_json::from_value::<StateV1>(value).map_err(corrupt)?)
    };
    if state.version != VERSION {
        return Err(StateError::BadBackend {
            path: path.into(),
            why: format!(
                "schema version {} is not one this proxy reads ({VERSION}); \
                 it was written by a newer handoff-proxy",
                state.version
            ),
        });
    }
    for app in &state.apps {
        let bad = |why: String| StateError::BadBackend {
            path: path.into(),
            why: format!("app {:?}: {why}", app.name),
        };
        handoff_shared::validate_app_name(&app.name).map_err(bad)?;
        if let Some(addr) = &app.backend {
            handoff_shared::parse_backend_addr(addr).map_err(bad)?;
        }
    }
    Ok(state)
}

/// A version-1 file's backend becomes the default app.
fn migrate(v1: StateV1) -> State {
    State {
        version: VERSION,
        apps: v1
            .backend
            .map(|backend| AppState {
                name: handoff_shared::DEFAULT_APP.to_string(),
                default: true,
                backend: Some(backend),
                protocol: v1.protocol,
                ..AppState::default()
            })
            .into_iter()
            .collect(),
    }
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

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("handoff-state-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_corruption() {
        let path = dir("rt").join("state.json");
        let _ = fs::remove_file(&path);
        assert_eq!(load(&path).unwrap(), State::default());
        let s = State {
            version: VERSION,
            apps: vec![
                AppState {
                    name: "site".into(),
                    default: true,
                    backend: Some("127.0.0.1:8081".into()),
                    ..AppState::default()
                },
                AppState {
                    name: "api".into(),
                    hosts: vec!["api.test".into()],
                    path_prefixes: vec!["/v1".into()],
                    strip_prefix: true,
                    backend: Some("127.0.0.1:8082".into()),
                    protocol: BackendProtocol::H2c,
                    ..AppState::default()
                },
            ],
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        fs::write(&path, b"{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
        fs::write(
            &path,
            br#"{"version":2,"apps":[{"name":"a","backend":"nope"}]}"#,
        )
        .unwrap();
        assert!(load(&path).is_err());
        fs::write(&path, br#"{"version":3,"apps":[]}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn a_single_backend_file_becomes_the_default_app() {
        let path = dir("v1").join("state.json");
        fs::write(&path, br#"{"backend":"127.0.0.1:8083"}"#).unwrap();
        let s = load(&path).unwrap();
        assert_eq!(s.version, VERSION);
        assert_eq!(s.apps.len(), 1);
        assert_eq!(s.apps[0].name, "default");
        assert!(s.apps[0].default);
        assert_eq!(s.apps[0].backend.as_deref(), Some("127.0.0.1:8083"));
        fs::write(&path, br#"{"backend":"127.0.0.1:8083","protocol":"h2c"}"#).unwrap();
        assert_eq!(load(&path).unwrap().apps[0].protocol, BackendProtocol::H2c);
        fs::write(&path, br#"{"backend":null}"#).unwrap();
        assert!(load(&path).unwrap().apps.is_empty());
        fs::write(&path, br#"{"backend":"127.0.0.1:8083","protocol":"h3"}"#).unwrap();
        assert!(load(&path).is_err());
    }
}
