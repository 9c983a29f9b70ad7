//! An `upstream:` address: `unix:/path`, `http://host:port` or `https://host:port` (with its
//! `upstream_ca`), checked and located like every other key.

use super::{Address, Entry, Validator};

impl Validator<'_> {
    pub(super) fn upstream(&mut self, name: &str, text: &str, ca: Option<&str>) -> Option<Entry> {
        let text = text.trim();
        let bad = |why: &str| {
            format!("{text:?} {why}: use \"http://host:port\", \"https://host:port\" or \"unix:/path/to.sock\"")
        };
        let https = text.starts_with("https://");
        if ca.is_some() && !https {
            let msg = "applies only to an \"https://\" upstream".to_string();
            self.app_problem(name, "upstream_ca", msg);
        }
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                self.app_problem(name, "upstream", bad("has no socket path"));
                return None;
            }
            return Some(Entry::Upstream {
                address: Address::Unix(self.resolve(path)),
            });
        }
        let Some(rest) = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
        else {
            self.app_problem(name, "upstream", bad("is not an upstream address"));
            return None;
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            self.app_problem(
                name,
                "upstream",
                bad("has a path; the app is mounted with `mount:`, not in the address"),
            );
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => ("", None),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None if https => Some(443),
            None => Some(80),
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0),
        };
        match port {
            Some(port) if !host.is_empty() && https => Some(Entry::Upstream {
                address: Address::Tls {
                    host: host.to_string(),
                    port,
                    ca_file: ca.map(|c| self.resolve(c.trim())),
                },
            }),
            Some(port) if !host.is_empty() => Some(Entry::Upstream {
                address: Address::Tcp {
                    host: host.to_string(),
                    port,
                },
            }),
            _ => {
                self.app_problem(name, "upstream", bad("has no valid host and port"));
                None
            }
        }
    }
}
