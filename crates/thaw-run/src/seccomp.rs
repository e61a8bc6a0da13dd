//! The default seccomp profile: the node's containers profile (`seccomp.json` in moby's
//! format, as Debian's `golang-github-containers-common` installs it for Podman, skopeo
//! and Buildah), translated to the OCI runtime format for this host's architecture, the
//! container's capabilities and the running kernel, as Docker and Podman do when they start
//! a container. A rule applies only where its `includes` all hold and its `excludes` do
//! not. The profile is read from the node, not built in, so that the operator's updates
//! to it apply; without one, a container is refused rather than run unconfined.

use crate::error::RunError;
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall};
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the node's profile is, unless `THAW_SECCOMP_PROFILE` says otherwise.
pub const PROFILE_PATH: &str = "/usr/share/containers/seccomp.json";
/// Profiles larger than this are not read.
const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// The profile file's format (moby's `types.Seccomp`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    arch_map: Vec<ArchEntry>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(flatten)]
    syscall: LinuxSyscall,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What the rules are chosen for.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Go's name of the architecture (`amd64`, `arm64`).
    pub arch: &'a str,
    /// The container's capabilities (`CAP_...`).
    pub caps: &'a [String],
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

impl Target<'_> {
    fn matches_all(&self, f: &Filter) -> bool {
        f.caps.iter().flatten().all(|c| self.caps.contains(c))
            && f.arches
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == self.arch))
            && f.min_kernel
                .as_deref()
                .is_none_or(|k| parse_kernel(k) <= Some(self.kernel))
    }

    fn matches_any(&self, f: &Filter) -> bool {
        f.caps.iter().flatten().any(|c| self.caps.contains(c))
            || f.arches.iter().flatten().any(|x| x == self.arch)
    }
}

/// `5.8` or `5.8.0-rc1` as (5, 8).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// This host's architecture as Go names it, and its seccomp architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The running kernel's (major, minor), (0, 0) if unknown (then rules needing a newer
/// kernel are left out, the safe side).
pub fn running_kernel() -> (u32, u32) {
    let release = rustix::system::uname();
    parse_kernel(&release.release().to_string_lossy()).unwrap_or((0, 0))
}

/// The node's profile file: `$THAW_SECCOMP_PROFILE`, or [`PROFILE_PATH`].
pub fn profile_path() -> PathBuf {
    std::env::var_os("THAW_SECCOMP_PROFILE")
        .map_or_else(|| PathBuf::from(PROFILE_PATH), PathBuf::from)
}

/// Reads the profile at `path` and translates it for `target`.
pub fn load_profile(path: &Path, target: &Target<'_>) -> Result<LinuxSeccomp, RunError> {
    let failed = |reason: String| RunError::Seccomp {
        path: path.into(),
        reason,
    };
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut text))
        .map_err(|e| failed(format!("{e} (Debian: apt-get install golang-github-containers-common; or --seccomp unconfined)")))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(failed(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    translate(&text, target).map_err(failed)
}

/// A profile in moby's format, translated for `target` to the OCI runtime format.
pub fn translate(text: &[u8], target: &Target<'_>) -> Result<LinuxSeccomp, String> {
    let profile: Profile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let seccomp_arch = match target.arch {
        "amd64" => Some(Arch::ScmpArchX86_64),
        "arm64" => Some(Arch::ScmpArchAarch64),
        _ => None,
    };
    let architectures: Vec<Arch> = profile
        .arch_map
        .iter()
        .filter(|a| Some(a.architecture) == seccomp_arch)
        .flat_map(|a| std::iter::once(a.architecture).chain(a.sub_architectures.iter().copied()))
        .collect();
    let syscalls: Vec<LinuxSyscall> = profile
        .syscalls
        .into_iter()
        .filter(|r| target.matches_all(&r.includes) && !target.matches_any(&r.excludes))
        .map(|r| r.syscall)
        .collect();
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(profile.default_action);
    seccomp.set_default_errno_ret(profile.default_errno_ret);
    seccomp.set_architectures(Some(architectures));
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile in the node's format, with each kind of rule it has.
    const PROFILE: &str = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                  {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
      "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "args": null, "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
        {"names": ["bpf", "mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_CHROOT"]}, "errnoRet": 1, "errno": "EPERM"},
        {"names": ["future_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.2"}}
      ]}"#;

    fn profile(caps: &[&str]) -> LinuxSeccomp {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        translate(
            PROFILE.as_bytes(),
            &Target {
                arch: "amd64",
                caps: &caps,
                kernel: (6, 1),
            },
        )
        .unwrap()
    }

    fn rules_for(caps: &[&str], name: &str) -> Vec<LinuxSyscall> {
        let p = profile(caps);
        p.syscalls()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn rules_follow_the_capabilities_the_architecture_and_the_kernel() {
        let default_caps: Vec<&str> = crate::defaults::CAPABILITIES.to_vec();
        assert!(rules_for(&default_caps, "mount").is_empty());
        let admin = rules_for(&["CAP_SYS_ADMIN"], "mount");
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            rules_for(&default_caps, "chroot")[0].action(),
            LinuxSeccompAction::ScmpActAllow
        );
        let no_chroot = rules_for(&[], "chroot");
        assert_eq!(
            (no_chroot[0].action(), no_chroot[0].errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(1))
        );
        assert_eq!(rules_for(&default_caps, "arch_prctl").len(), 1);
        assert!(rules_for(&default_caps, "arm_fadvise64_64").is_empty());
        assert!(
            rules_for(&default_caps, "future_call").is_empty(),
            "needs a newer kernel"
        );
        assert_eq!(
            rules_for(&default_caps, "personality")[0]
                .args()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        let p = profile(&[]);
        assert_eq!(
            (p.default_action(), p.default_errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(38))
        );
        assert_eq!(
            p.architectures().as_ref().unwrap(),
            &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
    }

    #[test]
    fn the_nodes_profile_translates_and_a_missing_one_is_a_clear_error() {
        let caps: Vec<String> = crate::defaults::CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let target = Target {
            arch: host_arch(),
            caps: &caps,
            kernel: running_kernel(),
        };
        let e = load_profile(Path::new("/no/such/seccomp.json"), &target)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/seccomp.json") && e.contains("unconfined"),
            "{e}"
        );
        if !Path::new(PROFILE_PATH).exists() {
            eprintln!("skipped the node's profile: {PROFILE_PATH} is not installed");
            return;
        }
        let p = load_profile(Path::new(PROFILE_PATH), &target).unwrap();
        assert!(p.syscalls().as_ref().unwrap().len() > 10);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_kernel("5.8"), Some((5, 8)));
        assert_eq!(parse_kernel("x"), None);
        assert!(running_kernel() > (3, 0));
    }
}
