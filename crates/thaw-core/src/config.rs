//! An image's run configuration: what a container started from it runs, and how.
//!
//! These are the fields of an OCI image config's `config` object that a runtime needs
//! (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`, `ExposedPorts`, `Labels`,
//! `StopSignal`), kept in the image's manifest so that the image id covers them. The
//! encoding is canonical (ports and labels sorted, each once), so one configuration has
//! one id; `validate` enforces it on every decode.

use crate::FormatError;
use serde::{Deserialize, Serialize};

/// How a container started from an image runs, as its image says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The program and its first arguments; `None` when the image sets none.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or the program, without an entrypoint); `None` when unset.
    pub cmd: Option<Vec<String>>,
    /// Environment, `KEY=value` each, in the image's order.
    pub env: Vec<String>,
    /// The working directory: empty (the root) or absolute.
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Ports the image serves on, `PORT/PROTO` (`tcp`, `udp`, `sctp`), sorted, each once.
    pub exposed_ports: Vec<String>,
    /// Labels as `(key, value)`, sorted by key, each key once.
    pub labels: Vec<(String, String)>,
    /// The signal that stops the container (`SIGTERM`, `SIGQUIT`, `9`); `None` for SIGTERM.
    pub stop_signal: Option<String>,
}

/// Whether `kv` is an environment entry: `KEY=value` with a non-empty key.
pub fn is_env_entry(kv: &str) -> bool {
    kv.split_once('=').is_some_and(|(k, _)| !k.is_empty())
}

/// Sets `KEY=value` in an environment list, in place of an earlier value of `KEY`.
pub fn set_env(env: &mut Vec<String>, kv: &str) {
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(slot) => *slot = kv.to_string(),
        None => env.push(kv.to_string()),
    }
}

fn bad(reason: String) -> FormatError {
    FormatError::Malformed {
        what: "image config",
        reason,
    }
}

impl ImageConfig {
    /// The command a container runs by default: entrypoint, then cmd.
    pub fn command(&self) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.iter().flatten().cloned());
        argv
    }

    /// Checks every rule the encoding promises (see the module docs).
    pub fn validate(&self) -> Result<(), FormatError> {
        let strings = self
            .entrypoint
            .iter()
            .flatten()
            .chain(self.cmd.iter().flatten())
            .chain(&self.env)
            .chain([&self.working_dir, &self.user])
            .chain(&self.exposed_ports)
            .chain(self.labels.iter().flat_map(|(k, v)| [k, v]))
            .chain(&self.stop_signal);
        for s in strings {
            if s.contains('\0') {
                return Err(bad(format!("{s:?} holds a NUL byte")));
            }
        }
        for e in &self.env {
            if !is_env_entry(e) {
                return Err(bad(format!("environment entry {e:?} is not KEY=value")));
            }
        }
        if !self.working_dir.is_empty() && !self.working_dir.starts_with('/') {
            return Err(bad(format!(
                "working directory {:?} is not absolute",
                self.working_dir
            )));
        }
        for p in &self.exposed_ports {
            validate_port(p)?;
        }
        if !self.exposed_ports.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad("exposed ports are not sorted and unique".into()));
        }
        if !self.labels.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(bad("labels are not sorted by unique key".into()));
        }
        if let Some(s) = &self.stop_signal {
            validate_signal(s)?;
        }
        Ok(())
    }
}

/// `PORT/PROTO` with a port of 1 to 65535 and a protocol Docker knows.
fn validate_port(p: &str) -> Result<(), FormatError> {
    let ok = p.split_once('/').is_some_and(|(port, proto)| {
        port.parse::<u16>().is_ok_and(|n| n > 0)
            && !port.starts_with('0')
            && matches!(proto, "tcp" | "udp" | "sctp")
    });
    if ok {
        Ok(())
    } else {
        Err(bad(format!("exposed port {p:?} is not PORT/tcp|udp|sctp")))
    }
}

/// A signal name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number from 1 to 64.
fn validate_signal(s: &str) -> Result<(), FormatError> {
    let ok = match s.parse::<u32>() {
        Ok(n) => (1..=64).contains(&n),
        Err(_) => {
            !s.is_empty()
                && s.len() <= 16
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
        }
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!("stop signal {s:?} is not a signal")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["--serve".into()]),
            env: vec!["PATH=/usr/bin:/bin".into(), "EMPTY=".into()],
            working_dir: "/srv".into(),
            user: "app:app".into(),
            exposed_ports: vec!["443/tcp".into(), "80/tcp".into(), "80/udp".into()],
            labels: vec![("a".into(), "1".into()), ("b".into(), "".into())],
            stop_signal: Some("SIGQUIT".into()),
        }
    }

    #[test]
    fn a_sound_config_passes_and_its_command_is_entrypoint_then_cmd() {
        let c = sample();
        c.validate().unwrap();
        assert_eq!(c.command(), ["/bin/app", "--serve"]);
        ImageConfig::default().validate().unwrap();
    }

    #[test]
    fn each_broken_rule_is_refused() {
        type Break = Box<dyn Fn(&mut ImageConfig)>;
        let cases: Vec<(&str, Break)> = vec![
            ("nul", Box::new(|c| c.cmd = Some(vec!["a\0b".into()]))),
            ("env", Box::new(|c| c.env.push("NOEQUALS".into()))),
            ("env key", Box::new(|c| c.env.push("=x".into()))),
            ("workdir", Box::new(|c| c.working_dir = "srv".into())),
            ("port", Box::new(|c| c.exposed_ports = vec!["0/tcp".into()])),
            (
                "proto",
                Box::new(|c| c.exposed_ports = vec!["80/http".into()]),
            ),
            ("port order", Box::new(|c| c.exposed_ports.reverse())),
            (
                "port dup",
                Box::new(|c| c.exposed_ports = vec!["1/tcp".into(); 2]),
            ),
            ("labels", Box::new(|c| c.labels.reverse())),
            (
                "signal",
                Box::new(|c| c.stop_signal = Some("sigterm".into())),
            ),
            ("signal no", Box::new(|c| c.stop_signal = Some("65".into()))),
        ];
        for (what, break_it) in cases {
            let mut c = sample();
            break_it(&mut c);
            assert!(c.validate().is_err(), "{what} passed");
        }
    }
}
