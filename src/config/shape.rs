//! Every structural mistake in one run: unknown keys (with "did you mean" for a near miss) and
//! values of the wrong type, each at its line and column, in plain words. serde stops at the
//! first error, so each key is read on its own (a one-key mapping into the raw types, whose
//! fields are all optional); a key that does not read is reported and left out, and the rest is
//! read as a whole. serde's own messages give the known keys, so the lists never drift from
//! the raw types.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use super::raw::{RawApp, RawConfig};
use super::{Locator, Problem};

/// The file read leniently: the raw config without the keys that do not read, and a problem
/// for each of them.
pub(super) fn read(value: Value, file: &Path, locator: &Locator) -> (RawConfig, Vec<Problem>) {
    let mut problems = Vec::new();
    // An unknown key is reported where the key is, a wrong value where the value is.
    let mut problem = |path: &str, app: Option<&str>, key: &str, message: String| {
        let location = if message.contains("is not a key") {
            locator.key(path)
        } else {
            locator.value(path)
        };
        problems.push(Problem {
            file: file.to_path_buf(),
            location,
            app: app.map(str::to_string),
            key: (!key.is_empty()).then(|| key.to_string()),
            message,
        })
    };
    let mut top = match value {
        Value::Mapping(m) => m,
        _ => {
            problem(
                "",
                None,
                "",
                "the file is empty or not a YAML mapping".into(),
            );
            return (empty(), problems);
        }
    };
    let mut apps = top.remove("apps");
    let mut kept = Mapping::new();
    for (k, v) in top {
        let name = key_text(&k);
        match one_key::<RawConfig>(&k, &v) {
            Ok(()) => {
                kept.insert(k, v);
            }
            Err(e) => problem(&name, None, &name, plain(&e, &name)),
        }
    }
    match apps.take() {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(list)) => {
            let good = read_apps(list, &mut problem);
            kept.insert("apps".into(), Value::Mapping(good));
        }
        Some(_) => problem(
            "apps",
            None,
            "apps",
            "must be a mapping of app names to their keys".into(),
        ),
    }
    match serde_yaml::from_value::<RawConfig>(Value::Mapping(kept)) {
        Ok(raw) => (raw, problems),
        Err(e) => {
            problem("", None, "", plain(&e, ""));
            (empty(), problems)
        }
    }
}

/// Each app's keys read one by one: those that read, by app; a problem for each that does not.
fn read_apps(list: Mapping, problem: &mut impl FnMut(&str, Option<&str>, &str, String)) -> Mapping {
    let mut good = Mapping::new();
    for (name, app) in list {
        let name_text = key_text(&name);
        let path = format!("apps.{name_text}");
        let Value::Mapping(keys) = app else {
            let msg = "must be a mapping of the app's keys (python:, script:, …)".into();
            problem(&path, Some(&name_text), "", msg);
            continue;
        };
        let mut app_kept = Mapping::new();
        for (k, v) in keys {
            let key = key_text(&k);
            match one_key::<RawApp>(&k, &v) {
                Ok(()) => {
                    app_kept.insert(k, v);
                }
                Err(e) => {
                    let at = format!("{path}.{key}");
                    problem(&at, Some(&name_text), &key, plain(&e, &key));
                }
            }
        }
        good.insert(name, Value::Mapping(app_kept));
    }
    good
}

fn empty() -> RawConfig {
    serde_yaml::from_value(Value::Mapping(Mapping::new())).expect("every key is optional")
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Reads `{k: v}` into `T` (all of whose fields are optional): whether that one key reads.
fn one_key<T: serde::de::DeserializeOwned>(k: &Value, v: &Value) -> Result<(), serde_yaml::Error> {
    let mut m = Mapping::new();
    m.insert(k.clone(), v.clone());
    serde_yaml::from_value::<T>(Value::Mapping(m)).map(drop)
}

/// serde's message for one key, in the words of someone writing the file.
fn plain(e: &serde_yaml::Error, key: &str) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    // A nested key's path ("limits: unknown field …"): the position says where.
    if let Some((path, rest)) = msg.split_once(": ") {
        if !path.contains(' ') {
            msg = rest.to_string();
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (unknown, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return match did_you_mean(unknown, &known) {
            Some(near) => format!("`{unknown}` is not a key wsgimux knows; did you mean `{near}`?"),
            None => format!(
                "`{unknown}` is not a key wsgimux knows here (the README's config reference lists them)"
            ),
        };
    }
    if let Some(shape) = msg.strip_prefix("data did not match any variant of untagged enum ") {
        return format!("must be {}", shape_words(shape.trim()));
    }
    if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        return format!(
            "must be {}, not {}",
            expected_words(key, expected),
            got_words(got)
        );
    }
    msg
}

/// The closest known key: a small edit distance (typos, swapped letters) or a near spelling;
/// an abbreviation of a key (`workdir` for `working_dir`) before any other near spelling.
fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let abbreviates = |k: &str| {
        let mut rest = k.chars();
        unknown.chars().all(|c| rest.any(|k| k == c))
    };
    known
        .iter()
        .map(|k| (abbreviates(k), strsim::jaro_winkler(unknown, k), *k))
        .filter(|(_, score, k)| *score >= 0.85 || strsim::damerau_levenshtein(unknown, k) <= 2)
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, k)| k)
}

fn expected_words(key: &str, expected: &str) -> String {
    let by_key = match key {
        "hosts" => Some("a list of host names"),
        "python_path" => Some("a list of folders"),
        "command" => Some("a list: the program and its arguments"),
        "env" => Some("a mapping of variable names to values"),
        "trusted_proxies" => Some("a list of addresses or CIDR ranges"),
        "static" => Some("a mapping of URL prefixes to folders"),
        _ => None,
    };
    if let Some(words) = by_key {
        return words.to_string();
    }
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        other => match other.strip_prefix("struct ") {
            Some(name) => shape_words(name),
            // Never a Rust type's name.
            None if other.starts_with("Raw") || other.contains("::") => {
                "a value of another shape (the README's config reference shows each key's)".into()
            }
            None => other.to_string(),
        },
    }
}

/// What a value of one of the raw types may be, in the file's words (these names are serde's,
/// never to be shown).
fn shape_words(type_name: &str) -> String {
    match type_name {
        "RawListen" => "an address (\"127.0.0.1:8080\"), a list of addresses, or a list of entries like {address: \"0.0.0.0:443\", tls: acme} or {address: \"0.0.0.0:443\", tls: {certificates: [{cert: FILE, key: FILE}]}}",
        "RawListener" | "RawFullListener" => "an address (\"127.0.0.1:8080\") or an entry like {address: \"0.0.0.0:443\", tls: acme} or {address: \"0.0.0.0:443\", tls: {certificates: [{cert: FILE, key: FILE}]}}",
        "RawTls" => "a mapping like {certificates: [{cert: FILE, key: FILE, hosts: [NAME]}]}",
        "RawListenerTls" => "acme, internal, or a mapping like {certificates: [{cert: FILE, key: FILE, hosts: [NAME]}]}",
        "RawAcme" => "a mapping like {directory: URL, email: ADDRESS, storage: FOLDER, challenge: http-01}",
        "RawCertificate" => "a mapping like {cert: FILE, key: FILE, hosts: [NAME]}",
        "RawLimits" => "a mapping of limits (max_uri_length:, max_header_size:, header_timeout:, body_timeout:, max_response_header_size:, …)",
        "RawSize" => "a size: a number of bytes, or text like 512, 8k, 1m, 2g",
        "RawDuration" => "a duration: a number of seconds, or text like 250ms, 30s, 5min, 1h 30m",
        "RawStatus" => "a status code such as 502",
        "EnvValue" => "text, a number or true/false (each variable's value)",
        "RawAccessLog" | "RawAccessLogFull" => "stdout, off, a file, or a mapping like {path: FILE, format: combined or json}",
        "RawAdmin" => "a mapping like {listen: \"127.0.0.1:9180\"}",
        "RawApp" => "a mapping of the app's keys (python:, script:, …)",
        _ => "a value of another shape (the README's config reference shows each key's)",
    }
    .to_string()
}

fn got_words(got: &str) -> String {
    let quoted = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the text {s}");
    }
    if let Some(n) = got
        .strip_prefix("integer ")
        .or_else(|| got.strip_prefix("floating point "))
    {
        return format!("the number {}", quoted(n));
    }
    if let Some(b) = got.strip_prefix("boolean ") {
        return quoted(b);
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_get_a_suggestion() {
        let known = ["python", "working_dir", "worker", "processes", "threads"];
        assert_eq!(did_you_mean("workdir", &known), Some("working_dir"));
        assert_eq!(did_you_mean("working_dri", &known), Some("working_dir"));
        assert_eq!(did_you_mean("pyton", &known), Some("python"));
        assert_eq!(did_you_mean("colour", &known), None);
    }

    #[test]
    fn types_are_said_in_plain_words() {
        assert_eq!(expected_words("processes", "u32"), "a whole number");
        assert_eq!(
            expected_words("hosts", "a sequence"),
            "a list of host names"
        );
        assert_eq!(got_words("string \"two\""), "the text \"two\"");
        assert_eq!(got_words("integer `3`"), "the number 3");
    }

    /// No message names a Rust or serde type: every raw type of the file, as serde names it
    /// in a mismatch, has words of its own.
    #[test]
    fn no_rust_type_reaches_a_message() {
        let source: String = ["raw.rs", "front.rs", "operating.rs"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("{}/src/config/{f}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap()
            })
            .collect();
        let mut names = Vec::new();
        for line in source.lines() {
            let line = line.trim_start();
            for kind in ["pub(super) struct ", "pub(super) enum "] {
                if let Some(rest) = line.strip_prefix(kind) {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
                    if name.starts_with("Raw") || name == "EnvValue" {
                        names.push(name);
                    }
                }
            }
        }
        assert!(names.len() >= 10, "{names:?}");
        for name in names.iter().filter(|n| *n != "RawConfig") {
            let words = shape_words(name);
            assert!(
                !words.contains("Raw") && !words.contains("another shape"),
                "{name}: {words}"
            );
            assert!(
                !expected_words("x", &format!("struct {name}")).contains("Raw"),
                "{name}"
            );
        }
    }
}
