//! The certificates part of `status`: a line each in the text, a card on the page, expiry
//! and order counts in `/metrics`.

use std::fmt::Write as _;

use super::words::{duration_text, family, html_escape, label};

/// When a certificate time is, from now: `2027-03-07 (in 89d)`.
fn when_text(at: u64, now: u64) -> String {
    let date = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
    );
    let day = date.to_string().chars().take(10).collect::<String>();
    if at >= now {
        format!("{day} (in {})", duration_text(at - now))
    } else {
        format!("{day} ({} ago)", duration_text(now - at))
    }
}

/// One line per certificate: names, source, state (since when), issuer, expiry, renewal.
pub(super) fn text(out: &mut String, certs: &[crate::acme::CertStatus], now: u64) {
    if certs.is_empty() {
        return;
    }
    let _ = writeln!(out, "certificates:");
    for c in certs {
        let mut line = format!("  {}  {}  {}", c.names.join(","), c.source, c.state);
        if c.state != "valid" {
            line.push_str(&format!(" (since {})", when_text(c.since, now)));
        }
        if let Some(i) = &c.issuer {
            line.push_str(&format!("  issuer {i:?}"));
        }
        if let Some(t) = c.not_after {
            line.push_str(&format!("  expires {}", when_text(t, now)));
        }
        if let Some(t) = c.next_renewal {
            line.push_str(&format!("  next renewal {}", when_text(t, now)));
        }
        let _ = writeln!(out, "{line}");
    }
}

/// A card with a row per certificate.
pub(super) fn html(out: &mut String, certs: &[crate::acme::CertStatus], now: u64) {
    if certs.is_empty() {
        return;
    }
    let e = html_escape;
    out.push_str("<div class=\"card\"><h2>Certificates</h2><div class=\"wrap\"><table><tr><th class=\"s\">Names</th><th class=\"s\">Source</th><th class=\"s\">State</th><th class=\"s\">Issuer</th><th>Expires</th><th>Next renewal</th></tr>\n");
    for c in certs {
        let class = if c.state == "valid" {
            "ok"
        } else if c.state.starts_with("failed") || c.state == "expired" {
            "bad"
        } else {
            "starting"
        };
        let since = if c.state == "valid" {
            String::new()
        } else {
            format!(" (since {})", when_text(c.since, now))
        };
        let _ = writeln!(
            out,
            "<tr><td class=\"s\">{}</td><td class=\"s\">{}</td><td class=\"s {class}\">{}{}</td><td class=\"s\">{}</td><td>{}</td><td>{}</td></tr>",
            e(&c.names.join(", ")),
            e(&c.source),
            e(&c.state),
            e(&since),
            e(c.issuer.as_deref().unwrap_or("")),
            c.not_after.map(|t| e(&when_text(t, now))).unwrap_or_default(),
            c.next_renewal.map(|t| e(&when_text(t, now))).unwrap_or_default(),
        );
    }
    out.push_str("</table></div></div>\n");
}

/// Each certificate's expiry by host, and ACME orders by outcome.
pub(super) fn prometheus(t: &mut String, certs: &[crate::acme::CertStatus]) {
    family(
        t,
        "wsgimux_certificate_expiry_timestamp_seconds",
        "gauge",
        "When each host's served certificate expires (unix time).",
    );
    for c in certs {
        let Some(at) = c.not_after else { continue };
        for host in &c.names {
            let _ = writeln!(
                t,
                "wsgimux_certificate_expiry_timestamp_seconds{{host=\"{}\",source=\"{}\"}} {at}",
                label(host),
                label(&c.source)
            );
        }
    }
    family(
        t,
        "wsgimux_certificate_orders_total",
        "counter",
        "ACME certificate orders (first orders and renewals) by host and outcome.",
    );
    for c in certs.iter().filter(|c| c.source == "acme") {
        let host = label(c.names.first().map_or("", String::as_str));
        for (outcome, n) in [
            ("success", c.orders_succeeded),
            ("failure", c.orders_failed),
        ] {
            let _ = writeln!(
                t,
                "wsgimux_certificate_orders_total{{host=\"{host}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
}
