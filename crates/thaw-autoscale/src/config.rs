//! The autoscaler's configuration file (TOML): deployments, each with an image, optional
//! weights, a policy and its parameters, a source and an actuator. Every error names the
//! file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::policy::{build_policy, Deployment, Params};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A syntax error, a missing key, a value of the wrong type or a refused value.
    #[error("{path}:{line}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key (dotted, from the deployment's name), or `-` when the parser could not say.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// Seconds between two regular decisions (events decide in between).
    #[serde(default = "default_tick")]
    pub tick_seconds: f64,
    /// The deployments.
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<DeploymentConfig>,
}

fn default_tick() -> f64 {
    1.0
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            tick_seconds: default_tick(),
            deployments: Vec::new(),
        }
    }
}

/// One deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Its name (replica names derive from it).
    pub name: Spanned<String>,
    /// The image replicas run (a tag or an id).
    pub image: String,
    /// An image of model weights prewarmed with the image before each start.
    #[serde(default)]
    pub weights: Option<String>,
    /// What a replica runs for each task, `THAW_TASK` in its environment.
    pub command: Vec<String>,
    /// The scaling policy.
    #[serde(default = "default_policy")]
    pub policy: Spanned<String>,
    /// The policy's parameters.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<f64>>,
    /// Tasks one replica works on at once.
    #[serde(default = "one")]
    pub concurrency: Spanned<u32>,
    /// The most replicas.
    pub max_replicas: Spanned<u32>,
    /// GPUs each replica gets (0: none).
    #[serde(default)]
    pub gpus_per_replica: u32,
    /// The cold start assumed until one has been measured, seconds.
    #[serde(default = "default_cold_start")]
    pub cold_start_seconds: Spanned<f64>,
    /// Seconds a stopping replica gets before it is killed.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: Spanned<f64>,
    /// `runc` or `crun`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Where tasks come from.
    pub source: SourceConfig,
}

fn default_policy() -> Spanned<String> {
    Spanned::new(0..0, "thaw".into())
}
fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_cold_start() -> Spanned<f64> {
    Spanned::new(0..0, 10.0)
}
fn default_grace() -> Spanned<f64> {
    Spanned::new(0..0, 10.0)
}
fn default_runtime() -> String {
    "runc".into()
}

/// A deployment's source of tasks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The Redis URL (`redis://HOST:PORT[/DB]`).
    pub redis: String,
    /// The queue's list key.
    pub queue: String,
}

impl DeploymentConfig {
    /// The policy's parameters as `build_policy` takes them.
    #[must_use]
    pub fn policy_params(&self) -> Params {
        let mut p = Params::new();
        for (k, v) in &self.params {
            p.set(k, *v.get_ref());
        }
        p
    }

    /// The deployment as its policy sees it.
    #[must_use]
    pub fn deployment(&self) -> Deployment {
        Deployment {
            concurrency: *self.concurrency.get_ref(),
            max_replicas: *self.max_replicas.get_ref(),
        }
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<AutoscaleConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and checks `text`, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<AutoscaleConfig, ConfigError> {
    let config: AutoscaleConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        key: "-".into(),
        reason: e.message().trim().to_owned(),
    })?;
    let fail = |span: std::ops::Range<usize>, key: String, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        line: line_of(text, span.start),
        key,
        reason,
    };
    if !(config.tick_seconds.is_finite() && config.tick_seconds > 0.0) {
        return Err(fail(
            0..0,
            "tick_seconds".into(),
            "must be a positive number of seconds".into(),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for d in &config.deployments {
        check_deployment(d, &fail)?;
        if !names.insert(d.name.get_ref().clone()) {
            return Err(fail(
                d.name.span(),
                "name".into(),
                format!("{:?} names two deployments", d.name.get_ref()),
            ));
        }
    }
    Ok(config)
}

type Fail<'a> = dyn Fn(std::ops::Range<usize>, String, String) -> ConfigError + 'a;

fn check_deployment(d: &DeploymentConfig, fail: &Fail<'_>) -> Result<(), ConfigError> {
    let name = d.name.get_ref();
    let key = |k: &str| format!("deployment {name:?}: {k}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || name.len() > 48
    {
        return Err(fail(
            d.name.span(),
            key("name"),
            "letters, digits, - and _ only, at most 48".into(),
        ));
    }
    if *d.max_replicas.get_ref() == 0 {
        return Err(fail(
            d.max_replicas.span(),
            key("max_replicas"),
            "must be at least 1".into(),
        ));
    }
    if *d.concurrency.get_ref() == 0 {
        return Err(fail(
            d.concurrency.span(),
            key("concurrency"),
            "must be at least 1 task per replica".into(),
        ));
    }
    for (what, v) in [
        ("cold_start_seconds", &d.cold_start_seconds),
        ("stop_grace_seconds", &d.stop_grace_seconds),
    ] {
        if !(v.get_ref().is_finite() && *v.get_ref() >= 0.0) {
            return Err(fail(
                v.span(),
                key(what),
                format!("{} is not a non-negative number of seconds", v.get_ref()),
            ));
        }
    }
    if d.command.is_empty() {
        return Err(fail(
            d.name.span(),
            key("command"),
            "must name a program".into(),
        ));
    }
    build_policy(d.policy.get_ref(), &d.policy_params(), d.deployment()).map_err(|e| {
        let span = match &e {
            crate::ParamError::UnknownKey { key, .. } | crate::ParamError::BadValue { key, .. } => {
                d.params
                    .get(key)
                    .map_or_else(|| d.policy.span(), Spanned::span)
            }
            _ => d.policy.span(),
        };
        fail(span, key("policy"), e.to_string())
    })?;
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests;
