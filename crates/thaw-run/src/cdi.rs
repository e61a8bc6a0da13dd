//! GPUs for `--gpus` from Container Device Interface specifications (the format that
//! `nvidia-ctk cdi generate` writes, YAML or JSON, read from `/etc/cdi` and `/var/run/cdi`):
//! the chosen devices' nodes, and the edits every device of the spec brings (more nodes,
//! bind mounts of the driver's libraries, environment, hooks), as a CDI-aware runtime
//! would apply them. A missing spec or a device node missing on the host (no driver) is a
//! clear error, never a container without its GPU.

use crate::error::RunError;
use crate::spec::{Device, Hook, Mount};
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The kind `--gpus` asks for.
pub const GPU_KIND: &str = "nvidia.com/gpu";
/// Where specifications are read from unless `THAW_CDI_DIRS` (colon-separated) says.
pub const SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];
/// Specification files larger than this are not read.
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// A CDI specification (the parts a runtime applies).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<SpecDevice>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    mounts: Vec<SpecMount>,
    #[serde(default)]
    hooks: Vec<SpecHook>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
    #[serde(default)]
    file_mode: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecMount {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecHook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

/// What `--gpus` adds to a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuEdits {
    /// Device nodes.
    pub devices: Vec<Device>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Environment.
    pub env: Vec<String>,
    /// OCI hooks.
    pub hooks: Vec<Hook>,
    /// The CDI names of the devices chosen (`nvidia.com/gpu=0`, ...).
    pub names: Vec<String>,
}

/// Which GPUs: `all` or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuRequest {
    /// Every GPU.
    All,
    /// The first N (by index).
    Count(usize),
}

impl GpuRequest {
    /// Parses `all` or a positive count.
    pub fn parse(arg: &str) -> Result<Self, RunError> {
        match arg {
            "all" => Ok(GpuRequest::All),
            n => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(GpuRequest::Count)
                .ok_or_else(|| {
                    RunError::Gpus(format!("{arg:?} is neither `all` nor a number of GPUs"))
                }),
        }
    }
}

/// The directories specifications are read from.
pub fn spec_dirs() -> Vec<PathBuf> {
    match std::env::var_os("THAW_CDI_DIRS") {
        Some(dirs) => std::env::split_paths(&dirs).collect(),
        None => SPEC_DIRS.iter().map(PathBuf::from).collect(),
    }
}

fn read_spec(path: &Path) -> Result<Spec, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SPEC_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    // JSON is YAML; one parser reads both.
    serde_saphyr::from_str(&text).map_err(|e| e.to_string())
}

/// Every readable spec of `kind` in `dirs` (files ending `.yaml`, `.yml` or `.json`, in
/// name order); unreadable ones are errors, since a GPU silently missing is worse.
fn specs_of(kind: &str, dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Spec)>, RunError> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !["yaml", "yml", "json"].contains(&ext) {
                continue;
            }
            let spec = read_spec(&path)
                .map_err(|e| RunError::Gpus(format!("CDI spec {}: {e}", path.display())))?;
            if spec.kind == kind {
                found.push((path, spec));
            }
        }
    }
    Ok(found)
}

/// The devices `request` picks from a spec: `all` takes the device named `all` when the
/// spec has one (nvidia-ctk's), else every indexed device; a count takes the first N
/// devices named by index.
fn choose(spec: &Spec, request: GpuRequest) -> Vec<&SpecDevice> {
    let mut indexed: Vec<&SpecDevice> = spec
        .devices
        .iter()
        .filter(|d| !d.name.is_empty() && d.name.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    indexed.sort_by_key(|d| d.name.parse::<u64>().unwrap_or(u64::MAX));
    match request {
        GpuRequest::All => match spec.devices.iter().find(|d| d.name == "all") {
            Some(all) => vec![all],
            None => indexed,
        },
        GpuRequest::Count(n) => indexed.into_iter().take(n).collect(),
    }
}

/// A device node's type and numbers, from the host's node.
fn device_of(node: &DeviceNode, spec: &Path) -> Result<Device, RunError> {
    let host = node.host_path.as_deref().unwrap_or(&node.path);
    let st = rustix::fs::stat(host).map_err(|e| {
        RunError::Gpus(format!(
            "device {host} (from {}) cannot be used: {e}; is the GPU driver loaded?",
            spec.display()
        ))
    })?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => {
            return Err(RunError::Gpus(format!(
                "{host} (from {}) is not a device node",
                spec.display()
            )))
        }
    };
    Ok(Device {
        path: node.path.clone(),
        kind,
        major: i64::from(rustix::fs::major(st.st_rdev)),
        minor: i64::from(rustix::fs::minor(st.st_rdev)),
        file_mode: node.file_mode.or(Some(st.st_mode & 0o7777)),
    })
}

fn apply(edits: &Edits, spec: &Path, out: &mut GpuEdits) -> Result<(), RunError> {
    for node in &edits.device_nodes {
        let device = device_of(node, spec)?;
        if !out.devices.iter().any(|d| d.path == device.path) {
            out.devices.push(device);
        }
    }
    out.mounts.extend(edits.mounts.iter().map(|m| Mount {
        source: m.host_path.clone().into(),
        destination: m.container_path.clone(),
        options: m.options.clone(),
    }));
    out.env.extend(edits.env.iter().cloned());
    for h in &edits.hooks {
        out.hooks.push(Hook {
            stage: h.hook_name.clone(),
            path: h.path.clone().into(),
            args: h.args.clone(),
            env: h.env.clone(),
        });
    }
    Ok(())
}

/// Resolves `request` against the specs in `dirs`.
pub fn resolve(request: GpuRequest, dirs: &[PathBuf]) -> Result<GpuEdits, RunError> {
    let specs = specs_of(GPU_KIND, dirs)?;
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let Some((path, spec)) = specs.first() else {
        return Err(RunError::Gpus(format!(
            "no CDI specification of kind {GPU_KIND} in {}: generate one with \
             `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` (NVIDIA Container Toolkit)",
            shown.join(" or ")
        )));
    };
    let chosen = choose(spec, request);
    let have = spec
        .devices
        .iter()
        .filter(|d| d.name.bytes().all(|b| b.is_ascii_digit()))
        .count();
    if chosen.is_empty() || matches!(request, GpuRequest::Count(n) if n > chosen.len()) {
        return Err(RunError::Gpus(format!(
            "asked for {request:?} but {} (CDI {}) lists {have} GPUs",
            path.display(),
            spec.cdi_version
        )));
    }
    let mut out = GpuEdits::default();
    for d in &chosen {
        apply(&d.container_edits, path, &mut out)?;
        out.names.push(format!("{GPU_KIND}={}", d.name));
    }
    apply(&spec.container_edits, path, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec in nvidia-ctk's shape, over device nodes this host has (/dev/null's numbers
    /// stand in for a GPU's).
    const SPEC: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: /dev/zero
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: GPU-1234
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: /dev/full
  mounts:
  - hostPath: /etc/hostname
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache]
"#;

    fn dir_with(name: &str, text: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(name), text).unwrap();
        d
    }

    #[test]
    fn devices_and_the_specs_edits_are_applied() {
        let d = dir_with("nvidia.yaml", SPEC);
        let all = resolve(GpuRequest::All, &[d.path().to_path_buf()]).unwrap();
        assert_eq!(all.names, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]);
        let paths: Vec<&str> = all.devices.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"]);
        assert_eq!(
            (
                all.devices[0].kind,
                all.devices[0].major,
                all.devices[0].minor
            ),
            ('c', 1, 3)
        );
        assert_eq!(all.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
        assert_eq!(
            all.mounts[0].destination,
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
        );
        assert_eq!(all.hooks[0].stage, "createContainer");
        let one = resolve(GpuRequest::Count(1), &[d.path().to_path_buf()]).unwrap();
        assert_eq!(one.names, ["nvidia.com/gpu=0"]);
        let e = resolve(GpuRequest::Count(3), &[d.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().contains("lists 2 GPUs"), "{e}");
    }

    #[test]
    fn json_specs_read_too_and_what_is_missing_is_said() {
        let json = r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"all","containerEdits":{"deviceNodes":[{"path":"/dev/nvidia0","hostPath":"/dev/null"}]}}]}"#;
        let d = dir_with("nvidia.json", json);
        assert_eq!(
            resolve(GpuRequest::All, &[d.path().to_path_buf()])
                .unwrap()
                .names,
            ["nvidia.com/gpu=all"]
        );
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(GpuRequest::All, &[empty.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no CDI specification") && e.contains("nvidia-ctk cdi generate"),
            "{e}"
        );
        let no_driver = dir_with("n.yaml", &SPEC.replace("/dev/null", "/dev/no-such-gpu"));
        let e = resolve(GpuRequest::Count(1), &[no_driver.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/no-such-gpu") && e.contains("driver"),
            "{e}"
        );
        let bad = dir_with("bad.yaml", "cdiVersion: [");
        assert!(resolve(GpuRequest::All, &[bad.path().to_path_buf()])
            .unwrap_err()
            .to_string()
            .contains("bad.yaml"));
        assert!(GpuRequest::parse("0").is_err() && GpuRequest::parse("two").is_err());
        assert_eq!(GpuRequest::parse("2").unwrap(), GpuRequest::Count(2));
    }
}
