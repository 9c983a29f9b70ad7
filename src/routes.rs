//! Route lookup: (host, path) → route. Pure data, built from a `Config` by `reload`'s caller,
//! read by `proxy` as an immutable snapshot. Does no IO.
//!
//! Host tiers are tried in order — exact name, the most specific `*.` wildcard, then routes
//! without hosts — and within a tier the longest mount that matches the path on a segment
//! boundary wins. A tier with no matching mount falls through to the next, so an app mounted at
//! `/` without hosts catches what the host-specific apps leave.

use std::collections::HashMap;

use crate::config::{AppSpec, HostPattern, Mount};

/// One routing entry: a mount and what it leads to.
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub mount: Mount,
    pub target: T,
}

/// The immutable table. `T` is what a route leads to (an app handle in production).
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, Vec<Route<T>>>,
    /// Sorted by suffix length, longest (most specific) first.
    wildcard: Vec<(String, Vec<Route<T>>)>,
    any_host: Vec<Route<T>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any_host: Vec::new(),
        }
    }
}

impl<T: Clone> RouteTable<T> {
    /// Builds a table from (host pattern or any host, mount, target) entries. Duplicate
    /// (host, mount) pairs are rejected by config validation; here the first one wins.
    pub fn new(entries: impl IntoIterator<Item = (Option<HostPattern>, Mount, T)>) -> Self {
        let mut table = RouteTable::default();
        let mut wild: HashMap<String, Vec<Route<T>>> = HashMap::new();
        for (host, mount, target) in entries {
            let list = match host {
                Some(HostPattern::Exact(h)) => table.exact.entry(h).or_default(),
                Some(HostPattern::Wildcard(s)) => wild.entry(s).or_default(),
                None => &mut table.any_host,
            };
            if !list.iter().any(|r| r.mount == mount) {
                list.push(Route { mount, target });
            }
        }
        table.wildcard = wild.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let by_mount_len =
            |v: &mut Vec<Route<T>>| v.sort_by_key(|r| std::cmp::Reverse(r.mount.as_str().len()));
        table.exact.values_mut().for_each(by_mount_len);
        table.wildcard.iter_mut().for_each(|(_, v)| by_mount_len(v));
        by_mount_len(&mut table.any_host);
        table
    }
}

impl<T: Clone> RouteTable<T> {
    /// The table for a set of apps: each app at its mount under each of its hosts (or any host
    /// when it names none). Earlier apps win duplicate claims.
    pub fn for_apps<'a>(apps: impl IntoIterator<Item = (&'a AppSpec, T)>) -> Self {
        RouteTable::new(apps.into_iter().flat_map(|(spec, target)| {
            let hosts: Vec<Option<HostPattern>> = if spec.route.hosts.is_empty() {
                vec![None]
            } else {
                spec.route.hosts.iter().cloned().map(Some).collect()
            };
            hosts
                .into_iter()
                .map(move |h| (h, spec.route.mount.clone(), target.clone()))
        }))
    }
}

impl<T> RouteTable<T> {
    /// The route for a normalized host (see [`normalize_host`]) and a percent-decoded path.
    pub fn lookup(&self, host: &str, path: &[u8]) -> Option<&Route<T>> {
        fn in_tier<'t, T>(routes: &'t [Route<T>], path: &[u8]) -> Option<&'t Route<T>> {
            routes.iter().find(|r| r.mount.matches(path))
        }
        let exact = self.exact.get(host).and_then(|r| in_tier(r, path));
        exact
            .or_else(|| {
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| crate::config::under_suffix(host, suffix))
                    .find_map(|(_, r)| in_tier(r, path))
            })
            .or_else(|| in_tier(&self.any_host, path))
    }

    /// Every route with the host pattern it is reached by (None: any host), most specific first.
    pub fn entries(&self) -> Vec<(Option<HostPattern>, &Route<T>)> {
        let mut exact: Vec<_> = self.exact.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (h, routes) in exact {
            out.extend(
                routes
                    .iter()
                    .map(|r| (Some(HostPattern::Exact(h.clone())), r)),
            );
        }
        for (s, routes) in &self.wildcard {
            out.extend(
                routes
                    .iter()
                    .map(|r| (Some(HostPattern::Wildcard(s.clone())), r)),
            );
        }
        out.extend(self.any_host.iter().map(|r| (None, r)));
        out
    }
}

/// Host header value → routing key: port and trailing dot removed, lower-cased. IPv6 literals
/// keep their brackets. Returns None for a value that is not a plausible host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        &raw[..=end]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/' || b == b'@')
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;

    fn table(entries: &[(&str, &str, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::new(entries.iter().map(|(h, m, t)| {
            let host = (!h.is_empty()).then(|| parse_host_pattern(h).unwrap());
            (host, Mount::parse(m).unwrap(), *t)
        }))
    }

    #[test]
    fn lookup_table() {
        let t = table(&[
            ("old.example.com", "/", "legacy"),
            ("example.com", "/api", "api"),
            ("*.example.com", "/api", "api-wild"),
            ("*.deep.example.com", "/api", "api-deep"),
            ("*.example.com", "/", "wild-root"),
            ("", "/", "default"),
            ("", "/docs", "docs"),
            ("", "/docs/v2", "docs2"),
        ]);
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("old.example.com", "/", Some("legacy")),
            ("old.example.com", "/api", Some("legacy")), // exact tier wins before wildcards
            ("example.com", "/api", Some("api")),
            ("example.com", "/api/", Some("api")),
            ("example.com", "/api/x/y", Some("api")),
            ("example.com", "/apix", Some("default")), // segment boundary; falls through
            ("example.com", "/", Some("default")),
            ("a.example.com", "/api/x", Some("api-wild")),
            ("a.example.com", "/other", Some("wild-root")),
            ("x.deep.example.com", "/api", Some("api-deep")), // most specific wildcard
            ("x.deep.example.com", "/zzz", Some("wild-root")),
            ("deep.example.com", "/api", Some("api-wild")), // "*.deep…" needs a label before it
            ("other.org", "/docs", Some("docs")),
            ("other.org", "/docs/v2/page", Some("docs2")), // longest mount
            ("other.org", "/docs/v22", Some("docs")),
            ("other.org", "/", Some("default")),
            ("", "/", Some("default")),
        ];
        for (host, path, want) in cases {
            let got = t.lookup(host, path.as_bytes()).map(|r| r.target);
            assert_eq!(got, *want, "{host} {path}");
        }
    }

    #[test]
    fn no_match_without_default() {
        let t = table(&[("example.com", "/api", "api")]);
        assert!(t.lookup("example.com", b"/").is_none());
        assert!(t.lookup("example.com", b"/apix").is_none());
        assert!(t.lookup("other.com", b"/api").is_none());
        assert!(RouteTable::<()>::default().lookup("x", b"/").is_none());
    }

    #[test]
    fn normalize_host_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Example.COM", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("[::1]x", None),
            ("example.com:http", None),
            ("", None),
            ("a b", None),
            ("user@host", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), *want, "{raw:?}");
        }
    }
}
