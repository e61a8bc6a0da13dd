//! The run configuration of an image: read from an OCI (or Docker) image config's JSON,
//! normalised to thaw-core's canonical [`ImageConfig`], and edited by `thaw build` flags.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use thaw_core::config::set_env;
use thaw_core::ImageConfig;

/// The parts of an image config blob (`application/vnd.oci.image.config.v1+json`) thaw
/// keeps. Every field may be missing or `null`, as Docker writes them.
#[derive(Debug, Default, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<RunSection>,
}

/// The `config` object itself (also what `thaw build --config FILE` may hold alone).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunSection {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

/// Reads an image config blob (the whole document, `{"config": {...}, "rootfs": ...}`).
/// A blob without a `config` object gives the empty configuration.
pub fn from_json(bytes: &[u8]) -> Result<ImageConfig, String> {
    let blob: ConfigBlob = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    normalise(blob.config.unwrap_or_default())
}

/// Reads `thaw build --config FILE`: an image config blob, or its `config` object alone.
pub fn from_file_json(bytes: &[u8]) -> Result<ImageConfig, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if value.get("config").is_some() {
        return from_json(bytes);
    }
    let run: RunSection = serde_json::from_value(value).map_err(|e| e.to_string())?;
    normalise(run)
}

fn normalise(run: RunSection) -> Result<ImageConfig, String> {
    let mut ports = BTreeSet::new();
    for port in run.exposed_ports.unwrap_or_default().into_keys() {
        ports.insert(normalise_port(&port)?);
    }
    let config = ImageConfig {
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.unwrap_or_default(),
        user: run.user.unwrap_or_default(),
        exposed_ports: ports.into_iter().collect(),
        labels: run.labels.unwrap_or_default().into_iter().collect(),
        stop_signal: run.stop_signal.filter(|s| !s.is_empty()),
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// `80` is `80/tcp`; protocols are lowercase.
fn normalise_port(port: &str) -> Result<String, String> {
    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let n: u16 = number
        .parse()
        .map_err(|_| format!("exposed port {port:?} is not a port number"))?;
    Ok(format!("{n}/{}", proto.to_ascii_lowercase()))
}

/// Changes `thaw build` makes to an image's configuration (or to none, for a directory or
/// tar image), as `docker build`'s instructions of the same names would.
#[derive(Debug, Clone, Default)]
pub struct ConfigEdits {
    /// Replaces the whole configuration (`--config FILE`), before the other edits.
    pub replace: Option<ImageConfig>,
    /// `--entrypoint`: the new entrypoint (an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    /// `--cmd`: the new default arguments.
    pub cmd: Option<Vec<String>>,
    /// `--env KEY=VALUE`: set, replacing an earlier value of the same key.
    pub env: Vec<String>,
    /// `--workdir`.
    pub working_dir: Option<String>,
    /// `--user`.
    pub user: Option<String>,
}

impl ConfigEdits {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.replace.is_none()
            && self.entrypoint.is_none()
            && self.cmd.is_none()
            && self.env.is_empty()
            && self.working_dir.is_none()
            && self.user.is_none()
    }

    /// The configuration after the edits: `None` only when there was none and nothing
    /// was set. Refuses an edit that breaks a rule of [`ImageConfig::validate`].
    pub fn apply(&self, base: Option<ImageConfig>) -> Result<Option<ImageConfig>, String> {
        if self.is_empty() {
            return Ok(base);
        }
        let mut c = self.replace.clone().or(base).unwrap_or_default();
        if let Some(e) = &self.entrypoint {
            c.entrypoint = Some(e.clone());
            // As in a Dockerfile: a new entrypoint drops the inherited default arguments.
            if self.cmd.is_none() {
                c.cmd = None;
            }
        }
        if let Some(cmd) = &self.cmd {
            c.cmd = Some(cmd.clone());
        }
        for kv in &self.env {
            set_env(&mut c.env, kv);
        }
        if let Some(w) = &self.working_dir {
            c.working_dir.clone_from(w);
        }
        if let Some(u) = &self.user {
            c.user.clone_from(u);
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_is_normalised() {
        let json = br#"{"architecture":"amd64","config":{"Entrypoint":null,"Cmd":["sh"],
            "Env":["PATH=/bin","A=1"],"WorkingDir":"","User":"1000:1000",
            "ExposedPorts":{"8080":{},"53/UDP":{},"443/tcp":{}},"Labels":{"z":"1","a":"2"},
            "StopSignal":"SIGQUIT"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = from_json(json).unwrap();
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(c.exposed_ports, ["443/tcp", "53/udp", "8080/tcp"]);
        assert_eq!(c.labels[0], ("a".into(), "2".into()));
        assert_eq!(c.user, "1000:1000");
        assert_eq!(from_json(b"{}").unwrap(), ImageConfig::default());
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        for (json, why) in [
            (&br#"{"config":{"Env":["NOEQUALS"]}}"#[..], "environment"),
            (br#"{"config":{"ExposedPorts":{"http":{}}}}"#, "port"),
            (br#"{"config":{"WorkingDir":"rel"}}"#, "working directory"),
            (br#"{"config":{"Cmd":"sh"}}"#, "invalid type"),
        ] {
            let err = from_json(json).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn edits_apply_as_dockerfile_instructions_would() {
        let base =
            from_json(br#"{"config":{"Entrypoint":["/e"],"Cmd":["a"],"Env":["A=1","B=2"]}}"#)
                .unwrap();
        let edits = ConfigEdits {
            env: vec!["B=3".into(), "C=4".into()],
            user: Some("nobody".into()),
            ..Default::default()
        };
        let c = edits.apply(Some(base.clone())).unwrap().unwrap();
        assert_eq!(c.env, ["A=1", "B=3", "C=4"]);
        assert_eq!(
            (c.user.as_str(), c.command()),
            ("nobody", vec!["/e".into(), "a".into()])
        );
        let new_entry = ConfigEdits {
            entrypoint: Some(vec!["/f".into()]),
            ..Default::default()
        };
        assert_eq!(
            new_entry.apply(Some(base)).unwrap().unwrap().command(),
            ["/f"]
        );
        assert_eq!(ConfigEdits::default().apply(None).unwrap(), None);
        let bad = ConfigEdits {
            working_dir: Some("rel".into()),
            ..Default::default()
        };
        assert!(bad.apply(None).is_err());
    }
}
