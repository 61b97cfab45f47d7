//! The route table: which app a request belongs to, by Host and path.
//!
//! An immutable snapshot, built whole whenever an app is added, changed or
//! removed and swapped in atomically (see [`crate::apps`]). A request costs
//! one hash lookup of its host (plus one per label for wildcard names) and a
//! scan of that host's few prefixes, longest first.
//!
//! Rules, as nginx's `server_name` + `location` and Traefik's `Host` +
//! `PathPrefix` users expect them:
//! - hosts compare lowercase, without the port and without a trailing dot;
//!   `*.example.com` covers every name below `example.com` (any depth, as
//!   nginx), and the longest matching wildcard wins;
//! - within a host, the longest path prefix wins, on segment boundaries:
//!   `/api` matches `/api` and `/api/x`, never `/apix`;
//! - paths match in normalised form ([`normalise`]), so `/api/../admin`,
//!   `%2e%2e` or `//` cannot reach an app whose prefix they do not name;
//! - a request no host route takes goes to the default app, if there is
//!   one; otherwise the proxy answers 404 itself.

use std::borrow::Cow;
use std::collections::HashMap;

/// What an app claims of the request space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// Exact names and `*.suffix` wildcards, lowercase, no port.
    pub hosts: Vec<String>,
    /// Path prefixes; empty means the whole host (`/`).
    pub path_prefixes: Vec<String>,
    /// Forward the path with the matched prefix removed.
    pub strip_prefix: bool,
    /// Takes requests whose host no app names.
    pub default: bool,
}

/// Why a set of routes cannot be a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("invalid host {host:?}: {why}")]
    BadHost { host: String, why: &'static str },
    #[error("invalid path prefix {prefix:?}: {why}")]
    BadPrefix { prefix: String, why: &'static str },
    #[error("{claim} is already routed to app {owner:?}")]
    Conflict { claim: String, owner: String },
}

/// One route a request matched: the app, and the path to forward when the
/// route strips its prefix.
#[derive(Debug)]
pub struct Matched<'a, T> {
    pub app: &'a T,
    /// `Some` when the prefix is stripped: the path (and query) to forward.
    pub rewritten: Option<String>,
}

/// A prefix of one host, and whose it is.
#[derive(Debug, Clone)]
struct PrefixRoute<T> {
    /// Normalised, without a trailing slash; "" is the whole host.
    prefix: String,
    strip: bool,
    app: T,
    owner: String,
}

#[derive(Debug, Clone)]
struct HostRoutes<T> {
    /// Longest prefix first.
    prefixes: Vec<PrefixRoute<T>>,
}

impl<T> Default for HostRoutes<T> {
    fn default() -> Self {
        Self {
            prefixes: Vec::new(),
        }
    }
}

/// The whole table. `T` is what a match yields (the app handle).
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, HostRoutes<T>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, HostRoutes<T>>,
    default: Option<(String, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T: Clone> RouteTable<T> {
    /// Builds a table from every app's routes; a claim two apps make (the
    /// same host and prefix, or two defaults) is an error naming the owner.
    pub fn build<'a>(
        apps: impl IntoIterator<Item = (&'a str, &'a RouteSpec, T)>,
    ) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for (name, spec, app) in apps {
            table.add(name, spec, app)?;
        }
        Ok(table)
    }

    /// Adds one app's routes.
    pub fn add(&mut self, name: &str, spec: &RouteSpec, app: T) -> Result<(), RouteError> {
        if spec.default {
            if let Some((owner, _)) = &self.default {
                return Err(RouteError::Conflict {
                    claim: "the default app".into(),
                    owner: owner.clone(),
                });
            }
            self.default = Some((name.to_string(), app.clone()));
        }
        let prefixes = if spec.path_prefixes.is_empty() {
            vec![String::new()]
        } else {
            spec.path_prefixes
                .iter()
                .map(|p| prefix_key(p))
                .collect::<Result<Vec<_>, _>>()?
        };
        for host in &spec.hosts {
            let (key, wild) = host_key(host)?;
            let routes = if wild {
                self.wildcard.entry(key.clone()).or_default()
            } else {
                self.exact.entry(key.clone()).or_default()
            };
            for prefix in &prefixes {
                if let Some(taken) = routes.prefixes.iter().find(|r| r.prefix == *prefix) {
                    return Err(RouteError::Conflict {
                        claim: format!(
                            "{}{}{}",
                            if wild { "*." } else { "" },
                            key,
                            if prefix.is_empty() { "/" } else { prefix }
                        ),
                        owner: taken.owner.clone(),
                    });
                }
                routes.prefixes.push(PrefixRoute {
                    prefix: prefix.clone(),
                    strip: spec.strip_prefix,
                    app: app.clone(),
                    owner: name.to_string(),
                });
                routes
                    .prefixes
                    .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            }
        }
        Ok(())
    }
}

impl<T> RouteTable<T> {
    /// The app for a request to `host` (as the client wrote it: any case,
    /// maybe a port or a trailing dot) and `path_and_query`.
    pub fn find(&self, host: Option<&str>, path_and_query: &str) -> Option<Matched<'_, T>> {
        // A table of one default app (every proxy before its first `--host`)
        // has nothing to match: the Host is not even parsed.
        let has_hosts = !(self.exact.is_empty() && self.wildcard.is_empty());
        let host = host.filter(|_| has_hosts).map(host_of);
        if let Some(host) = host.as_deref() {
            if let Some(routes) = self.host_routes(host) {
                let (path, query) = match path_and_query.find('?') {
                    Some(at) => path_and_query.split_at(at),
                    None => (path_and_query, ""),
                };
                let path = normalise(path);
                if let Some(r) = routes.prefixes.iter().find(|r| under(&path, &r.prefix)) {
                    let rewritten = r.strip.then(|| {
                        let rest = &path[r.prefix.len()..];
                        let rest = if rest.is_empty() { "/" } else { rest };
                        format!("{rest}{query}")
                    });
                    return Some(Matched {
                        app: &r.app,
                        rewritten,
                    });
                }
            }
        }
        self.default.as_ref().map(|(_, app)| Matched {
            app,
            rewritten: None,
        })
    }

    fn host_routes(&self, host: &str) -> Option<&HostRoutes<T>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Longest suffix first: `a.b.example.com` tries `b.example.com`,
        // then `example.com`, then `com`.
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(r) = self.wildcard.get(rest) {
                return Some(r);
            }
        }
        None
    }

    /// Whether any route names a host (so a request can be misdirected).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

/// Whether `path` is `prefix` or below it, on a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// The host part of a `Host` value or `:authority`: lowercase, no port, no
/// trailing dot. Borrowed when it already is all that.
pub fn host_of(authority: &str) -> Cow<'_, str> {
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A host as a key: lowercase, no trailing dot; `*.` marks a wildcard.
fn host_key(host: &str) -> Result<(String, bool), RouteError> {
    let bad = |why| RouteError::BadHost {
        host: handoff_shared::clip(host),
        why,
    };
    let lower = host.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let (name, wild) = match lower.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (lower, false),
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad("a host name has 1 to 253 characters"));
    }
    if name.contains(':') {
        return Err(bad("no port: routes match the host whatever the port"));
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(bad(
            "expected a DNS name (letters, digits, '-', dots) or *.name",
        ));
    }
    Ok((name.to_string(), wild))
}

/// A prefix as a key: starts with `/`, normalised, no trailing slash
/// (`/` itself becomes "", the whole host).
fn prefix_key(prefix: &str) -> Result<String, RouteError> {
    let bad = |why| RouteError::BadPrefix {
        prefix: handoff_shared::clip(prefix),
        why,
    };
    if !prefix.starts_with('/') {
        return Err(bad("a path prefix starts with '/'"));
    }
    if prefix.contains(['?', '#']) || prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad(
            "a path prefix has no query, fragment, space or control byte",
        ));
    }
    let norm = normalise(prefix);
    if norm != prefix.trim_end_matches('/') && !(norm.is_empty() && prefix == "/") {
        return Err(bad(
            "a path prefix must already be normalised (no '.', '..', '//' or %2e)",
        ));
    }
    Ok(norm.trim_end_matches('/').to_string())
}

/// The path as routing sees it: `%2e`/`%2f`-style escapes of unreserved
/// bytes and of `/` decoded, `//` collapsed, `.` and `..` segments resolved
/// (RFC 3986 §5.2.4; `..` never climbs above the root), and no trailing
/// slash. Only for matching: the path forwarded is the client's own unless
/// a route strips its prefix.
pub fn normalise(path: &str) -> String {
    let decoded = decode_path(path);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

/// Decodes percent-escapes of unreserved bytes and `/` (so `%2e%2e` is
/// `..` and `%2f` a separator, as many backends read them); other escapes
/// stay as they are. Borrowed when there is none.
fn decode_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let b = (h * 16 + l) as u8;
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[&str], prefixes: &[&str]) -> RouteSpec {
        RouteSpec {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            ..RouteSpec::default()
        }
    }

    fn table() -> RouteTable<&'static str> {
        let site = RouteSpec {
            default: true,
            ..spec(&[], &[])
        };
        let shop = spec(&["shop.test", "www.shop.test"], &[]);
        let api = RouteSpec {
            strip_prefix: true,
            ..spec(&["c.test"], &["/api"])
        };
        let admin = spec(&["c.test"], &["/admin", "/api/admin"]);
        let wild = spec(&["*.apps.test"], &[]);
        RouteTable::build([
            ("site", &site, "site"),
            ("shop", &shop, "shop"),
            ("api", &api, "api"),
            ("admin", &admin, "admin"),
            ("wild", &wild, "wild"),
        ])
        .unwrap()
    }

    #[test]
    fn hosts_match_in_any_case_without_port_or_trailing_dot() {
        let t = table();
        for host in [
            "shop.test",
            "SHOP.test",
            "shop.test:8080",
            "shop.test.",
            "Www.Shop.Test.:443",
        ] {
            assert_eq!(*t.find(Some(host), "/").unwrap().app, "shop", "{host}");
        }
        for host in ["a.apps.test", "x.y.apps.test", "A.APPS.TEST:1"] {
            assert_eq!(*t.find(Some(host), "/").unwrap().app, "wild", "{host}");
        }
        for host in ["apps.test", "other.test", "shop.test.evil"] {
            assert_eq!(*t.find(Some(host), "/").unwrap().app, "site", "{host}");
        }
        assert_eq!(*t.find(None, "/").unwrap().app, "site");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_after_normalising() {
        let t = table();
        let cases = [
            ("/api", "api"),
            ("/api/", "api"),
            ("/api/x?y=1", "api"),
            ("/apix", "site"),
            ("/api/admin/x", "admin"),
            ("/api/../admin", "admin"),
            ("/api/%2e%2e/admin", "admin"),
            ("/api/%2E%2E/admin", "admin"),
            ("//admin", "admin"),
            ("/x/../api/y", "api"),
            ("/admin/../api", "api"),
            ("/./api", "api"),
            ("/api%2fadmin", "admin"),
            ("/%61pi/x", "api"),
            ("/../../api", "api"),
            ("/", "site"),
        ];
        for (path, app) in cases {
            assert_eq!(*t.find(Some("c.test"), path).unwrap().app, app, "{path}");
        }
    }

    #[test]
    fn a_stripped_prefix_leaves_the_rest_of_the_path_and_the_query() {
        let t = table();
        let m = t.find(Some("c.test"), "/api/v1/items?x=1").unwrap();
        assert_eq!(m.rewritten.as_deref(), Some("/v1/items?x=1"));
        let m = t.find(Some("c.test"), "/api?x=1").unwrap();
        assert_eq!(m.rewritten.as_deref(), Some("/?x=1"));
        let m = t.find(Some("shop.test"), "/api").unwrap();
        assert_eq!(m.rewritten, None);
    }

    #[test]
    fn conflicting_claims_name_the_owner() {
        let a = spec(&["a.test"], &["/x"]);
        let b = spec(&["A.test."], &["/x/"]);
        let err = RouteTable::build([("one", &a, 1), ("two", &b, 2)]).unwrap_err();
        assert_eq!(
            err,
            RouteError::Conflict {
                claim: "a.test/x".into(),
                owner: "one".into()
            }
        );
        let d = RouteSpec {
            default: true,
            ..RouteSpec::default()
        };
        let err = RouteTable::build([("one", &d, 1), ("two", &d, 2)]).unwrap_err();
        assert!(matches!(err, RouteError::Conflict { owner, .. } if owner == "one"));
        // Same host, other prefixes: no conflict.
        let c = spec(&["a.test"], &["/y"]);
        assert!(RouteTable::build([("one", &a, 1), ("two", &c, 2)]).is_ok());
    }

    #[test]
    fn bad_hosts_and_prefixes_are_refused() {
        for host in ["", "a.test:80", "a b", "*.", "a..b", "http://a"] {
            let err = RouteTable::build([("x", &spec(&[host], &[]), 1)]);
            assert!(matches!(err, Err(RouteError::BadHost { .. })), "{host}");
        }
        for prefix in ["api", "/a/../b", "/a//b", "/a?b", "/a b", "/%2e%2e"] {
            let err = RouteTable::build([("x", &spec(&["a.test"], &[prefix]), 1)]);
            assert!(matches!(err, Err(RouteError::BadPrefix { .. })), "{prefix}");
        }
    }

    #[test]
    fn without_a_default_an_unknown_host_matches_nothing() {
        let shop = spec(&["shop.test"], &["/shop"]);
        let t = RouteTable::build([("shop", &shop, 1)]).unwrap();
        assert!(t.find(Some("other.test"), "/").is_none());
        assert!(t.find(Some("shop.test"), "/").is_none());
        assert_eq!(*t.find(Some("shop.test"), "/shop/x").unwrap().app, 1);
    }
}
