//! The config file's shape exactly as serde reads it: every key optional, unknown keys
//! refused. `validate` and `apps` turn these into the validated types.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{front, operating};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listen: Option<front::RawListen>,
    pub(super) redirect_https: Option<bool>,
    pub(super) acme: Option<super::acme::RawAcme>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) limits: Option<front::RawLimits>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) runtime_dir: Option<String>,
    pub(super) access_log: Option<operating::RawAccessLog>,
    pub(super) access_log_format: Option<String>,
    pub(super) log_dir: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) admin: Option<operating::RawAdmin>,
    #[serde(rename = "static")]
    pub(super) statics: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) python: Option<String>,
    pub(super) script: Option<String>,
    pub(super) module: Option<String>,
    pub(super) callable: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) mount: Option<String>,
    pub(super) working_dir: Option<String>,
    pub(super) python_path: Option<Vec<String>>,
    pub(super) env: Option<BTreeMap<String, EnvValue>>,
    pub(super) processes: Option<u32>,
    pub(super) threads: Option<u32>,
    pub(super) startup_timeout: Option<RawDuration>,
    pub(super) drain_timeout: Option<RawDuration>,
    pub(super) reload_on_changes: Option<bool>,
    pub(super) restart_file: Option<String>,
    pub(super) worker: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) upstream: Option<String>,
    pub(super) upstream_ca: Option<String>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) max_body_size: Option<front::RawSize>,
    pub(super) request_timeout: Option<RawDuration>,
    pub(super) queue_limit: Option<u32>,
    pub(super) overflow_wait: Option<RawDuration>,
    pub(super) request_buffering: Option<String>,
    pub(super) response_idle_timeout: Option<RawDuration>,
    #[serde(rename = "static")]
    pub(super) statics: Option<BTreeMap<String, String>>,
    pub(super) start: Option<String>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) max_requests: Option<u64>,
    pub(super) max_requests_jitter: Option<u64>,
    pub(super) stuck_limit: Option<u32>,
    pub(super) error_pages: Option<BTreeMap<super::operating::RawStatus, String>>,
    pub(super) access_log: Option<operating::RawAccessLog>,
    pub(super) max_memory: Option<super::front::RawSize>,
}

/// A duration as written: `500ms`, `30s`, `2m`, `1h`, or a plain number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// Environment values may be written as YAML numbers or booleans; they are passed as text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EnvValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl EnvValue {
    pub(super) fn into_string(self) -> String {
        match self {
            EnvValue::Text(s) => s,
            EnvValue::Int(i) => i.to_string(),
            EnvValue::Float(f) => f.to_string(),
            EnvValue::Bool(b) => b.to_string(),
        }
    }
}
