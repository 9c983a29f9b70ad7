//! `wsgimux explain`: which listener, route and app would serve a URL, and the `SCRIPT_NAME`
//! and `PATH_INFO` the app would see. Pure: works on a loaded config and its preflighted apps,
//! with the same route table and host rules the proxy uses.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use percent_encoding::percent_decode;

use crate::config::{Config, StaticAlias};
use crate::preflight::ReadyApp;
use crate::routes::{normalize_host, RouteTable};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{url:?} is not an http:// or https:// URL: {reason}")]
    BadUrl { url: String, reason: String },
}

/// What serves a URL: the lines `explain` prints, and whether anything does (an app, a static
/// folder or the https redirect answers it, whatever the listener line says) — `wsgimux
/// explain`'s exit code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    pub text: String,
    pub served: bool,
}

/// What serves `url`. `certified(host)`: whether a TLS certificate covers the host (for
/// `redirect_https`; reading certificates is the caller's IO).
pub fn explain(
    config: &Config,
    apps: &[ReadyApp],
    url: &str,
    certified: impl Fn(&str) -> bool,
) -> Result<Explanation, ExplainError> {
    let (text, served) = lines(config, apps, url, certified)?;
    Ok(Explanation { text, served })
}

/// The lines, and whether something answers the request.
fn lines(
    config: &Config,
    apps: &[ReadyApp],
    url: &str,
    certified: impl Fn(&str) -> bool,
) -> Result<(String, bool), ExplainError> {
    let bad = |reason: &str| ExplainError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = normalize_host(authority.host()).ok_or_else(|| bad("the host is not valid"))?;
    // Resolved as the front resolves it before routing.
    let path = match crate::http1::normalize_path(uri.path()) {
        Ok(p) => p.into_owned(),
        Err(r) => {
            return Ok((
                format!(
                    "{url}\n  refused      : 400 ({r:?}): the path climbs above / or holds a NUL\n"
                ),
                false,
            ))
        }
    };
    let decoded = percent_decode(path.as_bytes()).collect::<Vec<u8>>();

    let mut out = String::new();
    let _ = writeln!(out, "{url}");
    let listener = listener_for(config, &host, port, tls);
    let _ = writeln!(
        out,
        "  listener     : {}",
        listener_text(config, listener, port, tls)
    );
    if listener.is_some() && !tls && config.redirect_https && certified(&host) {
        let _ = writeln!(
            out,
            "  redirect     : 308 to https (redirect_https, {host} has a certificate)"
        );
        return Ok((out, true));
    }
    // Host-wide static folders come before any app, as the front serves them.
    if let Some(line) = static_line(&config.statics, "", &decoded) {
        let _ = writeln!(out, "{line}");
        return Ok((out, true));
    }
    let table = RouteTable::for_apps(apps.iter().enumerate().map(|(i, a)| (&a.spec, i)));
    let Some(route) = table.lookup(&host, &decoded) else {
        let _ = writeln!(
            out,
            "  route        : none: 404 (no app answers host {host:?} at this path)"
        );
        return Ok((out, false));
    };
    let app = &apps[route.target];
    describe_app(&mut out, app, route.mount.as_str());
    request_lines(&mut out, app, route.mount.as_str(), &decoded, &uri);
    Ok((out, true))
}

/// What the app's part of the answer is: a file of its static folders, or the request its
/// process sees.
fn request_lines(out: &mut String, app: &ReadyApp, mount: &str, decoded: &[u8], uri: &http::Uri) {
    let prefix = if mount == "/" { "" } else { mount };
    if let Some(line) = static_line(&app.spec.route.statics, prefix, decoded) {
        let _ = writeln!(out, "{line}");
        return;
    }
    let (script_name, path_info) = split_mount(mount, decoded);
    let _ = writeln!(out, "  SCRIPT_NAME  : {script_name:?}");
    let _ = writeln!(out, "  PATH_INFO    : {path_info:?}");
    let _ = writeln!(out, "  QUERY_STRING : {:?}", uri.query().unwrap_or(""));
    let host = uri.authority().map_or("", |a| a.as_str());
    let _ = writeln!(out, "  HTTP_HOST    : {host:?}");
}

/// The `static:` folder (longest prefix first; app folders' prefixes follow the app's
/// `mount`) that would serve `decoded`, and the file it names.
fn static_line(statics: &[StaticAlias], mount: &str, decoded: &[u8]) -> Option<String> {
    let path = String::from_utf8_lossy(decoded);
    statics.iter().find_map(|a| {
        let prefix = format!("{mount}{}", a.prefix);
        let rest = path.strip_prefix(&prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        // `join("")` would add a slash: a single-file alias names its file as it is.
        let file = if rest.is_empty() {
            a.dir.clone()
        } else {
            a.dir.join(rest)
        };
        Some(format!(
            "  static       : {prefix} -> {} (the front serves {}, no app involved)",
            a.dir.display(),
            file.display()
        ))
    })
}

/// `https://ADDR`, or why no listener would take the request.
fn listener_text(config: &Config, listener: Option<SocketAddr>, port: u16, tls: bool) -> String {
    match listener {
        Some(addr) if config.tls.contains_key(&addr) => format!("https://{addr}"),
        Some(addr) => format!("http://{addr}"),
        None => {
            let all: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
            format!(
                "none: no {} listener on port {port} (listening on {}); the request would not reach wsgimux",
                if tls { "TLS" } else { "plain" },
                all.join(", ")
            )
        }
    }
}

/// The route's and the app's lines.
fn describe_app(out: &mut String, app: &ReadyApp, mount: &str) {
    let hosts = if app.spec.route.hosts.is_empty() {
        "any host".to_string()
    } else {
        let names: Vec<String> = app.spec.route.hosts.iter().map(|h| h.to_string()).collect();
        names.join(", ")
    };
    let _ = writeln!(out, "  route        : mount {mount} ({hosts})");
    let _ = writeln!(
        out,
        "  app          : {} ({}, {} worker, {} process(es) x {} thread(s))",
        app.spec.name,
        app.describe_python(),
        app.worker,
        app.spec.process.processes,
        app.spec.process.threads
    );
}

/// The listener a client would reach for `host:port`: an address that is `host` itself, or a
/// wildcard address on that port (for a name, any listener on the port: it is assumed to
/// resolve to this machine).
fn listener_for(config: &Config, host: &str, port: u16, tls: bool) -> Option<SocketAddr> {
    let ip: Option<IpAddr> = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok();
    config
        .listen
        .iter()
        .filter(|a| a.port() == port && config.tls.contains_key(*a) == tls)
        .find(|a| match ip {
            Some(ip) => a.ip() == ip || a.ip().is_unspecified(),
            None => true,
        })
        .copied()
}

/// (SCRIPT_NAME, PATH_INFO) for a decoded path under a mount, as WSGI servers give them:
/// latin-1 text of the decoded bytes, the mount without its trailing part.
pub fn split_mount(mount: &str, decoded: &[u8]) -> (String, String) {
    let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
    if mount == "/" {
        return (String::new(), latin1(decoded));
    }
    let rest = decoded.get(mount.len()..).unwrap_or_default();
    (mount.to_string(), latin1(rest))
}

#[cfg(test)]
mod tests {
    use super::split_mount;

    #[test]
    fn mounts_split_paths() {
        assert_eq!(split_mount("/", b"/a/b"), ("".into(), "/a/b".into()));
        assert_eq!(split_mount("/blog", b"/blog"), ("/blog".into(), "".into()));
        assert_eq!(
            split_mount("/blog", b"/blog/x y"),
            ("/blog".into(), "/x y".into())
        );
        assert_eq!(
            split_mount("/b", b"/b/\xe9"),
            ("/b".into(), "/\u{e9}".into())
        );
    }
}
