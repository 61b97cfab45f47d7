//! The app the deploy tests ship in their images: a tiny HTTP/1.1 server that
//! can be told by its environment to be healthy, unhealthy, slow to start or
//! to crash, so `handoff` is exercised against the ways real releases fail.
//!
//! It is std-only on purpose: the tests compile it with bare `rustc` into a
//! statically linked binary for a `FROM scratch` image, with no registry and
//! no Cargo dependency resolution involved.
//!
//! Environment:
//! - `APP_VERSION`: returned by `GET /` and `/slow` (default `dev`).
//! - `PORT`: the app port (default 8080).
//! - `HEALTH_PORT`: when set, `/health` is served only there (like Spring
//!   Actuator's management port) and the app port answers it 404.
//! - `MODE`: `healthy` (default), `unhealthy` (200 with `{"status":"DOWN"}`),
//!   `crash` (exits 3 after ~0.5 s), `slow-start` (listens only after
//!   `START_DELAY_MS`, default 3000).
//! - `EXIT_AFTER_MS`: listens at once, answers health checks, and exits 3
//!   that many ms after it started (a release that crashes right after
//!   looking healthy).
//! - `CRASH_AFTER_SERVING_MS`: exits 3 that many ms after its first request
//!   other than `/health` (a release that crashes once it gets real traffic,
//!   i.e. right after the switch, whatever the timing of the health checks).
//! - `HEALTH_STATUS`: overrides the `status` the health route reports, to test
//!   case handling (`up`).
//!
//! Routes: `GET /` → version; `GET /slow?ms=N` → version after N ms;
//! `GET /health`; `GET /env/NAME` → that variable's value (so tests can check
//! a secret arrived without the app ever logging it).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

#[derive(Clone)]
struct Config {
    version: String,
    health_status: String,
    health_code: u16,
    /// True when health lives on a separate listener.
    split_health: bool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let mode = env_or("MODE", "healthy");
    let version = env_or("APP_VERSION", "dev");
    let port: u16 = env_or("PORT", "8080").parse().expect("PORT must be a port number");
    let health_port: Option<u16> = std::env::var("HEALTH_PORT")
        .ok()
        .map(|p| p.parse().expect("HEALTH_PORT must be a port number"));
    eprintln!("testapp {version} starting, mode={mode}, port={port}, health_port={health_port:?}");

    let (default_status, health_code) = match mode.as_str() {
        "healthy" | "slow-start" => ("UP", 200),
        "unhealthy" => ("DOWN", 200),
        "crash" => {
            thread::sleep(Duration::from_millis(500));
            eprintln!("testapp {version}: crashing on purpose (MODE=crash)");
            std::process::exit(3);
        }
        other => {
            eprintln!("testapp: unknown MODE {other:?}");
            std::process::exit(64);
        }
    };
    if let Some(ms) = std::env::var("EXIT_AFTER_MS").ok().and_then(|v| v.parse().ok()) {
        exit_after(ms, "EXIT_AFTER_MS");
    }
    if mode == "slow-start" {
        let ms: u64 = env_or("START_DELAY_MS", "3000").parse().unwrap_or(3000);
        thread::sleep(Duration::from_millis(ms));
    }
    let config = Config {
        version,
        health_status: env_or("HEALTH_STATUS", default_status),
        health_code,
        split_health: health_port.is_some(),
    };
    if let Some(hp) = health_port {
        let listener = TcpListener::bind(("0.0.0.0", hp)).expect("bind health port");
        let cfg = config.clone();
        thread::spawn(move || accept_loop(listener, cfg, true));
    }
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind app port");
    eprintln!("testapp {}: listening", config.version);
    accept_loop(listener, config, false);
}

fn exit_after(ms: u64, why: &'static str) {
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(ms));
        eprintln!("testapp: exiting on purpose after {ms} ms ({why})");
        std::process::exit(3);
    });
}

/// Arms `CRASH_AFTER_SERVING_MS` on the first request that is not a health check.
fn first_real_request() {
    static ARMED: std::sync::Once = std::sync::Once::new();
    if let Some(ms) = std::env::var("CRASH_AFTER_SERVING_MS").ok().and_then(|v| v.parse().ok()) {
        ARMED.call_once(|| exit_after(ms, "CRASH_AFTER_SERVING_MS"));
    }
}

fn accept_loop(listener: TcpListener, config: Config, health_listener: bool) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let cfg = config.clone();
        thread::spawn(move || {
            let _ = serve(stream, &cfg, health_listener);
        });
    }
}

/// Serves requests on one connection until the client closes it or asks to.
fn serve(stream: TcpStream, cfg: &Config, health_listener: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target, proto) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("/").to_string(),
            parts.next().unwrap_or("HTTP/1.0").to_string(),
        );
        let mut keep_alive = proto == "HTTP/1.1";
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                } else if name == "connection" {
                    keep_alive = match value.as_str() {
                        "close" => false,
                        "keep-alive" => true,
                        _ => keep_alive,
                    };
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body)?;
        }
        let (code, content_type, body) = route(&method, &target, cfg, health_listener);
        let reason = match code {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n",
            body.len()
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn route(method: &str, target: &str, cfg: &Config, health_listener: bool) -> (u16, &'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "method not allowed\n".into());
    }
    if path == "/health" {
        if cfg.split_health && !health_listener {
            return (404, "text/plain", "health is on the management port\n".into());
        }
        let body = format!("{{\"status\":\"{}\"}}", cfg.health_status);
        return (cfg.health_code, "application/json", body);
    }
    if health_listener {
        return (404, "text/plain", "not found\n".into());
    }
    first_real_request();
    match path {
        "/" => (200, "text/plain", cfg.version.clone()),
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            thread::sleep(Duration::from_millis(ms));
            (200, "text/plain", cfg.version.clone())
        }
        _ => match path.strip_prefix("/env/") {
            Some(name) => match std::env::var(name) {
                Ok(v) => (200, "text/plain", v),
                Err(_) => (404, "text/plain", "unset\n".into()),
            },
            None => (404, "text/plain", "not found\n".into()),
        },
    }
}
