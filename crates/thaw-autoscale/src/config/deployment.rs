//! One deployment's section of the configuration: what a replica runs, its policy, where
//! its work is read from (a source), what starts and stops its replicas (an actuator),
//! and how a replica is known to be ready; and the checks on all of it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use crate::policy::{build_policy, Deployment, Params};

/// One deployment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Its name (replica names derive from it).
    pub name: Spanned<String>,
    /// The image replicas run (a tag or an id); prewarmed before each start. Required by
    /// the `containers` actuator.
    #[serde(default)]
    pub image: Option<String>,
    /// An image of model weights prewarmed with the image before each start.
    #[serde(default)]
    pub weights: Option<String>,
    /// Files of the `weights` image (safetensors files, or a sharded checkpoint's
    /// `model.safetensors.index.json`) that each scale-up loads into the node's resident
    /// tier before the replica starts; the replica gets them over the weights socket
    /// (`THAW_WEIGHTS_SOCKET`, `THAW_WEIGHTS_IMAGE`, `THAW_WEIGHTS_FILES` in its
    /// environment). Needs a daemon with `--resident-weights` and `--weights-socket`.
    #[serde(default = "no_files")]
    pub weights_files: Spanned<Vec<String>>,
    /// With a Redis source, what a replica runs for each task (`THAW_TASK` in its
    /// environment); with a push source, the replica's own long-running program (for
    /// containers, empty means the image's entrypoint).
    #[serde(default)]
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
    /// `runc` or `crun` (the `containers` actuator).
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// What starts and stops replicas.
    #[serde(default = "default_actuator")]
    pub actuator: Spanned<ActuatorKind>,
    /// Where the `webhook` actuator posts the desired count.
    #[serde(default)]
    pub webhook: Option<Spanned<String>>,
    /// A file holding the bearer token the webhook is called with.
    #[serde(default)]
    pub webhook_token_file: Option<PathBuf>,
    /// Replica slot `i` listens on `port_base + i` (`THAW_PORT`), for gateways and probes.
    #[serde(default)]
    pub port_base: Option<Spanned<u16>>,
    /// Where work is read from.
    pub source: Spanned<SourceConfig>,
    /// How a replica is known to be ready (else: it takes work from a Redis source, or
    /// its process runs).
    #[serde(default)]
    pub readiness: Option<Spanned<ReadinessConfig>>,
}

/// What starts and stops a deployment's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActuatorKind {
    /// Containers the daemon runs from the image (lazily mounted), under runc or crun.
    Containers,
    /// Plain processes on the node: `command`, in its own process group.
    Process,
    /// An external orchestrator, told the desired count over HTTP.
    Webhook,
}

/// A deployment's source of work.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The Redis URL (`redis://HOST:PORT[/DB]`) of a reliable queue.
    #[serde(default)]
    pub redis: Option<String>,
    /// The queue's list key.
    #[serde(default)]
    pub queue: Option<String>,
    /// Signals pushed by a gateway to `POST /v1/deployments/NAME/signals`.
    #[serde(default)]
    pub push: bool,
}

impl SourceConfig {
    /// The Redis URL and queue key, when the source is a Redis queue.
    #[must_use]
    pub fn redis(&self) -> Option<(&str, &str)> {
        Some((self.redis.as_deref()?, self.queue.as_deref()?))
    }
}

/// How a replica is known to be ready.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// An HTTP URL that answers 2xx once the replica is ready; `{port}` becomes its port.
    #[serde(default)]
    pub http: Option<String>,
    /// A command on the node that exits 0 once the replica is ready (`THAW_REPLICA`,
    /// `THAW_PORT` and `THAW_REPLICA_PID` in its environment).
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds between two probes of a starting replica.
    #[serde(default = "default_period")]
    pub period_seconds: f64,
    /// Seconds one probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout_seconds: f64,
}

fn default_policy() -> Spanned<String> {
    Spanned::new(0..0, "thaw".into())
}
fn no_files() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
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
fn default_actuator() -> Spanned<ActuatorKind> {
    Spanned::new(0..0, ActuatorKind::Containers)
}
fn default_period() -> f64 {
    1.0
}
fn default_probe_timeout() -> f64 {
    2.0
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

    /// The port replica slot `slot` listens on, when the deployment has ports.
    #[must_use]
    pub fn port(&self, slot: u32) -> Option<u16> {
        let base = *self.port_base.as_ref()?.get_ref();
        u16::try_from(u32::from(base) + slot).ok()
    }
}

pub(super) type Fail<'a> = dyn Fn(std::ops::Range<usize>, String, String) -> ConfigError + 'a;

pub(super) fn check_deployment(d: &DeploymentConfig, fail: &Fail<'_>) -> Result<(), ConfigError> {
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
    check_numbers(d, fail, &key)?;
    check_source(d, fail, &key)?;
    check_actuator(d, fail, &key)?;
    check_readiness(d, fail, &key)?;
    check_weights(d, fail, &key)?;
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

type Key<'a> = dyn Fn(&str) -> String + 'a;

fn check_numbers(d: &DeploymentConfig, fail: &Fail<'_>, key: &Key<'_>) -> Result<(), ConfigError> {
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
    if let Some(base) = &d.port_base {
        if d.port(*d.max_replicas.get_ref() - 1).is_none() || *base.get_ref() == 0 {
            return Err(fail(
                base.span(),
                key("port_base"),
                "port_base + max_replicas must stay within 1..=65535".into(),
            ));
        }
    }
    Ok(())
}

/// The most files a deployment keeps resident (as a prewarm names at most).
pub const MAX_WEIGHTS_FILES: usize = 64;

fn check_weights(d: &DeploymentConfig, fail: &Fail<'_>, key: &Key<'_>) -> Result<(), ConfigError> {
    let files = d.weights_files.get_ref();
    let why = if files.is_empty() {
        None
    } else if d.weights.is_none() {
        Some("weights_files are files of the weights image: set weights = \"IMAGE\"".to_owned())
    } else if files.len() > MAX_WEIGHTS_FILES {
        Some(format!(
            "at most {MAX_WEIGHTS_FILES} files, not {}",
            files.len()
        ))
    } else {
        files.iter().find_map(|f| {
            let bad = f.is_empty()
                || f.len() > 4096
                || f.contains('\0')
                || f.contains(',')
                || f.split('/').any(|c| c == "..");
            bad.then(|| format!("{f:?} is not a path in the image (no .., commas or NUL)"))
        })
    };
    match why {
        Some(why) => Err(fail(d.weights_files.span(), key("weights_files"), why)),
        None => Ok(()),
    }
}

fn check_source(d: &DeploymentConfig, fail: &Fail<'_>, key: &Key<'_>) -> Result<(), ConfigError> {
    let s = d.source.get_ref();
    let redis = s.redis.is_some() || s.queue.is_some();
    let why = if redis && s.push {
        Some("either a Redis queue (redis, queue) or push = true, not both")
    } else if !redis && !s.push {
        Some("needs a Redis queue (redis, queue) or push = true")
    } else if redis && s.redis().is_none() {
        Some("a Redis source needs both redis and queue")
    } else if redis && d.command.is_empty() && d.actuator.get_ref() != &ActuatorKind::Webhook {
        Some("a Redis source needs the command each task runs")
    } else {
        None
    };
    match why {
        Some(why) => Err(fail(d.source.span(), key("source"), why.into())),
        None => Ok(()),
    }
}

fn check_actuator(d: &DeploymentConfig, fail: &Fail<'_>, key: &Key<'_>) -> Result<(), ConfigError> {
    let span = if d.actuator.span().is_empty() {
        d.name.span()
    } else {
        d.actuator.span()
    };
    let why = match d.actuator.get_ref() {
        ActuatorKind::Containers if d.image.is_none() => {
            Some("the containers actuator needs an image")
        }
        ActuatorKind::Process if d.command.is_empty() => {
            Some("the process actuator needs a command")
        }
        ActuatorKind::Webhook => match &d.webhook {
            None => Some("the webhook actuator needs webhook = \"http://...\""),
            Some(url)
                if !(url.get_ref().starts_with("http://")
                    || url.get_ref().starts_with("https://")) =>
            {
                return Err(fail(
                    url.span(),
                    key("webhook"),
                    "must be an http:// or https:// URL".into(),
                ))
            }
            Some(_) => None,
        },
        _ => None,
    };
    if d.webhook.is_some() && d.actuator.get_ref() != &ActuatorKind::Webhook {
        return Err(fail(
            span,
            key("webhook"),
            "only the webhook actuator calls a webhook (actuator = \"webhook\")".into(),
        ));
    }
    match why {
        Some(why) => Err(fail(span, key("actuator"), why.into())),
        None => Ok(()),
    }
}

fn check_readiness(
    d: &DeploymentConfig,
    fail: &Fail<'_>,
    key: &Key<'_>,
) -> Result<(), ConfigError> {
    let Some(r) = &d.readiness else {
        return Ok(());
    };
    let (span, c) = (r.span(), r.get_ref());
    let why = if c.http.is_some() != c.command.is_empty() {
        Some("needs exactly one of http or command")
    } else if c.http.as_deref().is_some_and(|u| !u.starts_with("http://")) {
        Some("http must be an http:// URL")
    } else if c.http.as_deref().is_some_and(|u| u.contains("{port}")) && d.port_base.is_none() {
        Some("{port} in the URL needs port_base")
    } else if ![c.period_seconds, c.timeout_seconds]
        .iter()
        .all(|t| t.is_finite() && *t > 0.0)
    {
        Some("period_seconds and timeout_seconds must be positive")
    } else if d.actuator.get_ref() == &ActuatorKind::Webhook {
        Some("the webhook's orchestrator probes its own replicas")
    } else {
        None
    };
    match why {
        Some(why) => Err(fail(span, key("readiness"), why.into())),
        None => Ok(()),
    }
}
