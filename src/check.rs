//! `wsgimux check`: what `serve` would refuse, found without serving — the config, every
//! interpreter, every file and account (`preflight`), then every `script:`/`module:` app
//! imported as its processes will import it (`supervisor::check_imports`).

use std::path::Path;

use crate::config::Config;
use crate::preflight::{self, LoadError};

/// What `check` found in a valid config: the report, and what it leaves exposed
/// (`preflight::exposures`), for stderr.
pub struct Checked {
    pub report: String,
    pub warnings: Vec<String>,
}

/// `wsgimux check`: everything `serve` would check before starting, then (unless `import` is
/// off) every `script:`/`module:` app imported as its processes will import it. The report for
/// a valid config; every problem otherwise.
pub async fn check(path: &Path, import: bool) -> Result<Checked, LoadError> {
    // Every app whose entry is sound is checked and imported, whatever else is wrong: all the
    // problems in one run.
    let preflight::Inspected {
        config,
        apps,
        mut problems,
    } = preflight::inspect(path).await?;
    if import {
        let scratch = tempfile::Builder::new()
            .prefix("wsgimux-check-")
            .tempdir()
            .map_err(|source| LoadError::Read {
                path: std::env::temp_dir(),
                source,
            })?;
        let failures = crate::supervisor::check_imports(&apps, scratch.path())
            .await
            .map_err(|source| LoadError::Read {
                path: scratch.path().to_path_buf(),
                source,
            })?;
        problems.extend(failures.into_iter().filter_map(|(name, f)| {
            let app = apps.iter().find(|a| a.spec.name == name)?;
            Some(import_problem(&config, &app.spec, f))
        }));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
        return Err(LoadError::Config(crate::config::ConfigError { problems }));
    }
    let mut report = crate::app::describe_routes(&config, &apps);
    report.push_str(&certificates_words(&config));
    if let Some(preview) = running_preview(path).await {
        report.push_str(&format!("a reload of the running wsgimux: {preview}\n"));
    }
    Ok(Checked {
        report,
        warnings: preflight::exposures(&config, &apps, crate::account::is_root()),
    })
}

/// What a reload of this file would change in the wsgimux serving it, if one does (asked of
/// its control socket: it diffs the file against the config in force).
async fn running_preview(path: &Path) -> Option<String> {
    let file = preflight::config_path(path);
    let socket = crate::control::socket_for_config(&file);
    match crate::control::preview(&socket, std::time::Duration::from_secs(5)).await {
        Ok(text) => Some(text),
        Err(crate::control::ControlError::NotRunning { .. }) => None,
        Err(e) => Some(format!("cannot tell ({e})")),
    }
}

/// An import failure at the app's `script`/`module` key: the error, and where in the app's
/// own code (relative to the config's folder when inside it).
fn import_problem(
    config: &Config,
    spec: &crate::config::AppSpec,
    f: crate::supervisor::ImportFailure,
) -> crate::config::Problem {
    let key = match spec.process.entry {
        crate::config::Entry::Module { .. } => "module",
        crate::config::Entry::Command { .. } => "command",
        _ => "script",
    };
    let base = config.file.parent().unwrap_or(Path::new("/"));
    let at = f.at.map(|(file, line)| {
        let shown = file
            .strip_prefix(base)
            .unwrap_or(&file)
            .display()
            .to_string();
        format!(" ({shown}:{line})")
    });
    crate::config::Problem {
        file: config.file.clone(),
        location: spec.locations.entry,
        app: Some(spec.name.clone()),
        key: Some(key.to_string()),
        message: format!("{}{}", f.error, at.unwrap_or_default()),
    }
}

/// Which names `tls: acme` will order certificates for (and which it skips, with why), and
/// where `tls: internal`'s CA is.
fn certificates_words(config: &crate::config::Config) -> String {
    use crate::config::CertSource;
    let mut out = String::new();
    let sources: Vec<CertSource> = config.tls.values().map(|t| t.source).collect();
    if sources.contains(&CertSource::Acme) {
        let (wanted, skipped) = crate::config::acme_names(config);
        let a = &config.acme;
        out.push_str(&format!(
            "tls: acme: certificates from {} by {}, kept in {}\n",
            a.directory,
            a.challenge.as_str(),
            a.storage.display()
        ));
        if wanted.is_empty() {
            out.push_str("  no name will be requested: no app has an exact host in hosts:\n");
        }
        for name in wanted {
            out.push_str(&format!("  will request: {name}\n"));
        }
        for s in skipped {
            out.push_str(&format!("  skipped: {} ({})\n", s.host, s.reason));
        }
    }
    if sources.contains(&CertSource::Internal) {
        out.push_str(&format!(
            "tls: internal: certificates from the local CA {} (made at the first start; wsgimux trust adds it to this machine's trust store)\n",
            crate::acme::root_file(&config.acme.storage).display()
        ));
    }
    out
}
