//! The autoscaler's configuration file (TOML): deployments, each with an image, optional
//! weights, a policy and its parameters, a source and an actuator. Every error names the
//! file, the line and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod deployment;

use deployment::check_deployment;
pub use deployment::{
    ActuatorKind, DeploymentConfig, ReadinessConfig, SourceConfig, MAX_WEIGHTS_FILES,
};

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
    /// At shutdown, leave replicas running for the next daemon to adopt (else every
    /// replica is drained and stopped): processes, and containers whose roots' FUSE
    /// connections a holder process keeps (`thaw serve` gives them one).
    #[serde(default)]
    pub leave_running_on_exit: bool,
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
            leave_running_on_exit: false,
            deployments: Vec::new(),
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

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests;
