//! The routes a deploy registers for a host-routed app: `--host`,
//! `--path-prefix`, `--strip-prefix`.
//!
//! The flags declare the app's complete routes: with `--host`, the hosts,
//! the prefixes (none = the whole host) and `strip_prefix` are all sent, so
//! a route dropped from the CI job is dropped from the proxy too. Without
//! any route flag nothing is sent and the proxy keeps what it has. Only the
//! obvious mistakes are caught here, before anything starts; the proxy
//! remains the judge of conflicts (409) and of what it accepts (400).

use handoff_shared::AppStatus;
use serde_json::{json, Value};

/// An app's hosts and path prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub hosts: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub strip_prefix: bool,
}

impl Routes {
    /// From the deploy flags: `None` when no route flag was given (the app
    /// is the default app, or keeps the routes the proxy has for it).
    pub fn from_flags(
        hosts: &[String],
        prefixes: &[String],
        strip_prefix: bool,
    ) -> Result<Option<Routes>, String> {
        if hosts.is_empty() {
            if !prefixes.is_empty() || strip_prefix {
                return Err(
                    "--path-prefix and --strip-prefix need --host: name the host(s) the prefix \
                     is on (the flags declare the app's complete routes)"
                        .into(),
                );
            }
            return Ok(None);
        }
        for host in hosts {
            check_host(host)?;
        }
        for prefix in prefixes {
            check_prefix(prefix)?;
        }
        if strip_prefix && prefixes.is_empty() {
            return Err("--strip-prefix needs at least one --path-prefix to strip".into());
        }
        Ok(Some(Routes {
            hosts: hosts.to_vec(),
            path_prefixes: prefixes.to_vec(),
            strip_prefix,
        }))
    }

    /// The routes the proxy has for an app now.
    pub fn of(app: &AppStatus) -> Routes {
        Routes {
            hosts: app.hosts.clone(),
            path_prefixes: app.path_prefixes.clone(),
            strip_prefix: app.strip_prefix,
        }
    }

    /// `shop.example.com, www.shop.example.com` or `api.example.com/api (stripped)`.
    pub fn text(&self) -> String {
        describe(&self.hosts, &self.path_prefixes, self.strip_prefix)
    }

    pub fn to_json(&self) -> Value {
        json!({"hosts": self.hosts, "path_prefixes": self.path_prefixes,
               "strip_prefix": self.strip_prefix})
    }
}

/// Every host with every prefix, for people.
pub fn describe(hosts: &[String], prefixes: &[String], strip: bool) -> String {
    if hosts.is_empty() {
        return "-".into();
    }
    let mut parts = Vec::new();
    for host in hosts {
        if prefixes.is_empty() {
            parts.push(host.clone());
        } else {
            parts.extend(prefixes.iter().map(|p| format!("{host}{p}")));
        }
    }
    let mut text = parts.join(", ");
    if strip {
        text.push_str(" (prefix stripped)");
    }
    text
}

/// A host name or `*.example.com` wildcard: no scheme, port, path or space.
fn check_host(host: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid --host {:?}: {why}",
            handoff_shared::clip(host)
        ))
    };
    if host.is_empty() || host.len() > 253 {
        return bad("expected a host name such as shop.example.com");
    }
    if host.contains("://") || host.contains('/') {
        return bad("give the host name only, without scheme or path (use --path-prefix)");
    }
    if host.contains(':') {
        return bad("give the host name without a port (routing ignores the port)");
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok || name.is_empty() || name.starts_with('.') || name.contains("..") {
        return bad("use letters, digits, '-' and '.', or a leading '*.' wildcard");
    }
    Ok(())
}

/// A path prefix: starts with `/`, one or more plain segments.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid --path-prefix {:?}: {why}",
            handoff_shared::clip(prefix)
        ))
    };
    if !prefix.starts_with('/') || prefix == "/" {
        return bad(
            "expected a path such as /api (without --path-prefix the app takes the whole host)",
        );
    }
    if prefix.contains(['?', '#', '%', ' ', '\\']) || prefix.contains("//") {
        return bad("use plain path segments, no query, fragment, escapes or empty segments");
    }
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return bad("'.' and '..' segments are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn no_route_flags_means_no_routes() {
        assert_eq!(Routes::from_flags(&[], &[], false), Ok(None));
    }

    #[test]
    fn flags_declare_the_complete_routes() {
        let r = Routes::from_flags(&s(&["shop.example.com", "*.shop.example.com"]), &[], false)
            .unwrap()
            .unwrap();
        assert_eq!(r.hosts, s(&["shop.example.com", "*.shop.example.com"]));
        assert!(r.path_prefixes.is_empty());
        assert_eq!(r.text(), "shop.example.com, *.shop.example.com");
        let r = Routes::from_flags(&s(&["example.com"]), &s(&["/api", "/v2/api"]), true)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.text(),
            "example.com/api, example.com/v2/api (prefix stripped)"
        );
    }

    #[test]
    fn obvious_mistakes_are_usage_errors() {
        let h = |x: &str| Routes::from_flags(&s(&[x]), &[], false);
        for bad in [
            "",
            "https://shop.example.com",
            "shop.example.com/api",
            "shop.example.com:443",
            "shop example.com",
            "*.",
            ".example.com",
            "a..b",
        ] {
            assert!(h(bad).is_err(), "host {bad:?} accepted");
        }
        let p = |x: &str| Routes::from_flags(&s(&["example.com"]), &s(&[x]), false);
        for bad in ["api", "/", "/api?x", "/a//b", "/a/../b", "/%2e", "/a b"] {
            assert!(p(bad).is_err(), "prefix {bad:?} accepted");
        }
        p("/api/v1").unwrap();
        // A prefix without a host, or stripping nothing.
        assert!(Routes::from_flags(&[], &s(&["/api"]), false).is_err());
        assert!(Routes::from_flags(&[], &[], true).is_err());
        assert!(Routes::from_flags(&s(&["example.com"]), &[], true).is_err());
    }
}
