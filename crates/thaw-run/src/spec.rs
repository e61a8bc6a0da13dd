//! The OCI runtime configuration (`config.json`) of a container: what it runs and as whom,
//! its mounts, namespaces, capabilities, seccomp profile, masked paths and cgroup limits.
//! Written as JSON in the specification's own words, then checked by reading it into
//! `oci_spec`'s types: what is written is what those types understand.

use crate::defaults::{ALLOWED_CHAR_DEVICES, CAPABILITIES, MASKED_PATHS, READONLY_PATHS};
use crate::error::RunError;
use crate::user::ResolvedUser;
use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A network namespace of its own with only loopback (`--network none`, the default
    /// until port publishing exists).
    #[default]
    None,
    /// The host's network (`--network host`), for replicas that serve on a port.
    Host,
}

/// A host path bound into the container (`--mount SRC:DST[:ro]`, `/etc/hosts`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// Where it appears in the container (absolute).
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

/// Any other mount (from a CDI specification), with its own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host path.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: String,
    /// Mount options (`ro`, `nosuid`, `bind`, ...).
    pub options: Vec<String>,
}

/// An OCI hook the runtime runs on the host at `stage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststart` or
    /// `poststop`.
    pub stage: String,
    /// The program.
    pub path: PathBuf,
    /// Its arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<String>,
}

/// The hook stages of the OCI runtime specification.
const HOOK_STAGES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// cgroup limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `--memory`: bytes of memory (and no swap beyond it).
    pub memory: Option<i64>,
    /// `--cpus`: CPUs' worth of time per period.
    pub cpus: Option<f64>,
    /// `--pids-limit`: processes and threads.
    pub pids: Option<i64>,
}

/// A device node to create in the container and allow in its cgroup (from CDI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its path in the container.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Mode bits, if set.
    pub file_mode: Option<u32>,
}

/// Everything a container's configuration is made from, decided already.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The root file system (the overlay over the lazily mounted image).
    pub rootfs: PathBuf,
    /// The program and its arguments.
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// Who it runs as.
    pub user: ResolvedUser,
    /// Its host name.
    pub hostname: String,
    /// Its network.
    pub network: Network,
    /// Bind mounts, in order (the generated `/etc` files among them).
    pub binds: Vec<BindMount>,
    /// `/dev/shm`'s size in bytes.
    pub shm_size: u64,
    /// cgroup limits.
    pub limits: Limits,
    /// Extra devices (`--gpus`).
    pub devices: Vec<Device>,
    /// Extra mounts (`--gpus`), after the binds.
    pub mounts: Vec<Mount>,
    /// Hooks (`--gpus`).
    pub hooks: Vec<Hook>,
    /// Its seccomp profile (`None`: unconfined).
    pub seccomp: Option<LinuxSeccomp>,
    /// Whether its standard streams are a terminal.
    pub terminal: bool,
}

fn base_mounts(shm_size: u64) -> Vec<Value> {
    let m = |dest: &str, kind: &str, source: &str, options: &[&str]| json!({"destination": dest, "type": kind, "source": source, "options": options});
    let shm = format!("size={shm_size}");
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        ),
    ]
}

fn bind_mount(b: &BindMount) -> Value {
    let mode = if b.readonly { "ro" } else { "rw" };
    json!({"destination": b.destination, "type": "bind", "source": b.source,
           "options": ["rbind", "rprivate", "nosuid", "nodev", mode]})
}

fn resources(limits: &Limits, devices: &[Device]) -> Value {
    let mut allow = vec![
        json!({"allow": false, "access": "rwm"}),
        json!({"allow": true, "type": "c", "access": "m"}),
        json!({"allow": true, "type": "b", "access": "m"}),
    ];
    for (major, minor) in ALLOWED_CHAR_DEVICES {
        allow.push(
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}),
        );
    }
    for d in devices {
        allow.push(json!({"allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": "rwm"}));
    }
    let mut r = json!({"devices": allow});
    if let Some(bytes) = limits.memory {
        // Swap equal to the limit: no swap beyond it, so the limit is the limit.
        r["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    if let Some(cpus) = limits.cpus {
        let period: u64 = 100_000;
        r["cpu"] = json!({"quota": (cpus * period as f64).round() as i64, "period": period});
    }
    if let Some(pids) = limits.pids {
        r["pids"] = json!({"limit": pids});
    }
    r
}

fn namespaces(network: Network) -> Value {
    let mut ns = vec!["pid", "ipc", "uts", "mount"];
    if network == Network::None {
        ns.push("network");
    }
    Value::Array(ns.into_iter().map(|t| json!({"type": t})).collect())
}

/// The configuration, as `oci_spec` reads it.
pub fn runtime_spec(c: &ContainerConfig) -> Result<Spec, RunError> {
    let mut mounts = base_mounts(c.shm_size);
    mounts.extend(c.binds.iter().map(bind_mount));
    mounts.extend(c.mounts.iter().map(|m| {
        json!({"destination": m.destination, "type": "bind", "source": m.source, "options": m.options})
    }));
    let devices: Vec<Value> = c
        .devices
        .iter()
        .map(|d| json!({"path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "fileMode": d.file_mode, "uid": 0, "gid": 0}))
        .collect();
    let caps = CAPABILITIES;
    let mut linux = json!({
        "namespaces": namespaces(c.network),
        "resources": resources(&c.limits, &c.devices),
        "devices": devices,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if let Some(seccomp) = &c.seccomp {
        linux["seccomp"] =
            serde_json::to_value(seccomp).map_err(|e| RunError::Spec(e.to_string()))?;
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": c.rootfs, "readonly": false},
        "hostname": c.hostname,
        "process": {
            "terminal": c.terminal,
            "user": {"uid": c.user.uid, "gid": c.user.gid, "additionalGids": c.user.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": c.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        },
        "mounts": mounts,
        "linux": linux,
    });
    if !c.hooks.is_empty() {
        spec["hooks"] = hooks(&c.hooks)?;
    }
    serde_json::from_value(spec).map_err(|e| RunError::Spec(e.to_string()))
}

fn hooks(hooks: &[Hook]) -> Result<Value, RunError> {
    let mut by_stage = serde_json::Map::new();
    for h in hooks {
        if !HOOK_STAGES.contains(&h.stage.as_str()) {
            return Err(RunError::Spec(format!(
                "hook stage {:?} is not one of {HOOK_STAGES:?}",
                h.stage
            )));
        }
        let entry = json!({"path": h.path, "args": h.args, "env": h.env});
        match by_stage.get_mut(&h.stage) {
            Some(Value::Array(list)) => list.push(entry),
            _ => {
                by_stage.insert(h.stage.clone(), json!([entry]));
            }
        }
    }
    Ok(Value::Object(by_stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            rootfs: "/r".into(),
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: ResolvedUser {
                uid: 1000,
                gid: 100,
                additional_gids: vec![44],
                home: "/h".into(),
            },
            hostname: "box".into(),
            network: Network::None,
            binds: vec![BindMount {
                source: "/data".into(),
                destination: "/data".into(),
                readonly: true,
            }],
            shm_size: 1 << 20,
            limits: Limits {
                memory: Some(64 << 20),
                cpus: Some(1.5),
                pids: Some(32),
            },
            devices: vec![Device {
                path: "/dev/nvidia0".into(),
                kind: 'c',
                major: 195,
                minor: 0,
                file_mode: Some(0o666),
            }],
            mounts: vec![Mount {
                source: "/lib/libcuda.so.1".into(),
                destination: "/usr/lib/libcuda.so.1".into(),
                options: vec!["ro".into(), "bind".into()],
            }],
            hooks: vec![Hook {
                stage: "createContainer".into(),
                path: "/bin/hook".into(),
                args: vec!["hook".into()],
                env: vec![],
            }],
            seccomp: None,
            terminal: false,
        }
    }

    #[test]
    fn the_configuration_says_what_was_decided() {
        let v = serde_json::to_value(runtime_spec(&config()).unwrap()).unwrap();
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 100, "additionalGids": [44]})
        );
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(
            v["linux"]["resources"]["cpu"],
            json!({"quota": 150_000, "period": 100_000})
        );
        assert_eq!(v["linux"]["resources"]["pids"], json!({"limit": 32}));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let shm = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(shm["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=1048576")));
        let data = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(
            (data["source"].as_str(), data["options"][4].as_str()),
            (Some("/data"), Some("ro"))
        );
        assert_eq!(v["linux"]["devices"][0]["major"], json!(195));
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            CAPABILITIES.len()
        );
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
    }

    #[test]
    fn host_network_shares_the_namespace() {
        let mut c = config();
        c.network = Network::Host;
        let v = serde_json::to_value(runtime_spec(&c).unwrap()).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }
}
