//! What a container gets unless asked otherwise, as Docker's defaults set it (moby's
//! `oci/defaults.go` and `oci/caps/defaults.go`): the environment's `PATH`, capabilities,
//! masked and read-only paths, and the devices the cgroup allows.

/// `PATH` when neither the image nor the flags set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the container (a file bound over with /dev/null, a directory with an
/// empty read-only tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in the container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Character devices the cgroup allows (type, major, minor; `None` is any), after denying
/// all: null, zero, full, random, urandom, tty, console, ptmx, the pts, and tun, as Docker.
pub const ALLOWED_CHAR_DEVICES: &[(Option<i64>, Option<i64>)] = &[
    (Some(1), Some(3)),
    (Some(1), Some(5)),
    (Some(1), Some(7)),
    (Some(1), Some(8)),
    (Some(1), Some(9)),
    (Some(5), Some(0)),
    (Some(5), Some(1)),
    (Some(5), Some(2)),
    (Some(136), None),
    (Some(10), Some(200)),
];

/// `/dev/shm`'s size unless `--shm-size`: 64 MiB.
pub const SHM_SIZE: u64 = 64 << 20;
