//! Mounting and unmounting: FUSE options, the optional overlayfs upper layer for writes,
//! and cleaning up mounts whose daemon died.

use crate::fs::ThawFs;
use crate::registry::ProcessId;
use crate::stats::StatsSnapshot;
use crate::takeover::{HolderCommand, TakeoverError};
use fuser::{Config, MountOption, SessionACL};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod adopt;
mod table;
pub use adopt::adopt;
pub use table::{absolute, is_mounted, mount_points, unmount, Unmounted};

/// A mount point resolved by the caller to a descriptor (an `O_PATH` directory opened
/// without following symlinks), so nothing swapped into the path afterwards can redirect
/// the mount. The FUSE layer is mounted in `staging`, a directory only root can change,
/// and the visible mount (a read-only bind or the overlay) goes on `/proc/self/fd/N`,
/// which `mount(2)` resolves to exactly the directory the descriptor holds. (`fuser`
/// resolves its mount point to a path, and `fusermount3` would too, so neither can
/// mount on the descriptor itself.)
#[derive(Debug, Clone)]
pub struct MountTarget {
    /// The mount point.
    pub dir: Arc<OwnedFd>,
    /// Where the FUSE layer goes when the mount is read-only.
    pub staging: PathBuf,
}

/// How to mount an image.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub threads: usize,
    /// Let every user (root inside a container included) read the mount.
    pub allow_other: bool,
    /// Have `fusermount3` unmount the filesystem if this process dies; `None` means "when
    /// `fusermount3` is installed".
    pub auto_unmount: Option<bool>,
    /// Put an overlayfs over the image with its upper and work directories here.
    pub writable: Option<PathBuf>,
    /// Mount on this descriptor rather than on the path (the path is then only recorded).
    pub target: Option<MountTarget>,
    /// The kernel's readahead for this mount, in bytes (0 leaves the kernel's default).
    /// The kernel starts FUSE mounts at 128 KiB whatever the filesystem asks for at init;
    /// larger windows mean fewer, larger read requests (up to 1 MiB each) for sequential
    /// readers. Set through the mount's `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, which
    /// needs root; without it the default stays.
    pub kernel_readahead: u64,
    /// Keep the FUSE connection open in a holder process started with this command, so
    /// that the mount outlives this process and a successor can serve it again (see
    /// [`crate::takeover`]). Auto-unmount is then off: it would end the mount with us.
    pub holder: Option<HolderCommand>,
    /// Where a held mount records its open table for a successor ([`crate::opens`]).
    pub open_table: Option<PathBuf>,
}

/// [`MountOptions::kernel_readahead`] unless told otherwise: measured best for sequential
/// reads in docs/benchmarks.md (512 KiB and 4 MiB were slower).
pub const DEFAULT_KERNEL_READAHEAD: u64 = 1 << 20;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 8,
            allow_other: true,
            auto_unmount: None,
            writable: None,
            target: None,
            kernel_readahead: DEFAULT_KERNEL_READAHEAD,
            holder: None,
            open_table: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
/// Why a mount or unmount failed.
pub enum MountError {
    #[error("{op} {path}: {source}")]
    /// A system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The mount point is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// Nothing is mounted there.
    #[error("{0} is not mounted")]
    NotMounted(String),
    /// The connection could not be held for a successor, or taken over from a holder.
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Whether `fusermount3` (needed for auto-unmount) is on the PATH.
pub fn have_fusermount3() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
}

/// A mounted image. Unmounts when dropped.
#[derive(Debug)]
pub struct MountHandle {
    fs: ThawFs,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    fuse_dir: PathBuf,
    /// An overlay or a bind mount sits on the mount point above the FUSE layer.
    top_layer: bool,
    /// The process keeping the connection for a successor, if any.
    holder: Option<ProcessId>,
}

/// Mounts `fs` at `mountpoint`: read-only, `nosuid`, `nodev`, and writable through
/// overlayfs when `options.writable` names an upper directory.
pub fn mount(
    fs: ThawFs,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<MountHandle, MountError> {
    let (mountpoint, visible) = match &options.target {
        Some(t) => (
            mountpoint.to_path_buf(),
            PathBuf::from(format!("/proc/self/fd/{}", t.dir.as_raw_fd())),
        ),
        None => {
            if !mountpoint.is_dir() {
                return Err(MountError::NotADirectory(mountpoint.display().to_string()));
            }
            let c = mountpoint
                .canonicalize()
                .map_err(io("resolve", mountpoint))?;
            (c.clone(), c)
        }
    };
    let fuse_dir = fuse_dir(&mountpoint, options)?;
    let config = fuse_config(&fs, options);
    let session = fuser::Session::new(fs.clone(), &fuse_dir, &config)
        .map_err(io("mount FUSE at", &fuse_dir))?;
    let holder = match hold(&fs, session.as_fd(), options) {
        Ok(h) => h,
        Err(e) => {
            drop(session); // unmounts
            return Err(e);
        }
    };
    let mut handle = MountHandle {
        fs,
        session: Some(
            session
                .spawn()
                .map_err(io("start the FUSE threads of", &fuse_dir))?,
        ),
        mountpoint: mountpoint.clone(),
        fuse_dir: fuse_dir.clone(),
        top_layer: false,
        holder,
    };
    if options.kernel_readahead > 0 {
        if let Err(e) = set_kernel_readahead(&fuse_dir, options.kernel_readahead) {
            tracing::info!(mountpoint = %fuse_dir.display(), error = %e, "kernel readahead left at its default");
        }
    }
    let top = match &options.writable {
        Some(upper) => {
            let upper = upper.canonicalize().map_err(io("resolve", upper))?;
            Some((
                "mount overlayfs at",
                mount_overlay(&fuse_dir, &upper, &visible),
            ))
        }
        None if options.target.is_some() => Some((
            "bind-mount the image at",
            bind_read_only(&fuse_dir, &visible),
        )),
        None => None,
    };
    if let Some((op, result)) = top {
        if let Err(e) = result {
            drop(handle); // unmounts the FUSE layer
            return Err(io(op, &mountpoint)(e));
        }
        handle.top_layer = true;
    }
    Ok(handle)
}

/// Where the FUSE layer goes: under the upper directory when writable, in the staging
/// directory when mounting on a descriptor, else on the mount point itself.
fn fuse_dir(mountpoint: &Path, options: &MountOptions) -> Result<PathBuf, MountError> {
    let private = match (&options.writable, &options.target) {
        (Some(upper), _) => {
            for sub in ["upper", "work", "lower"] {
                std::fs::create_dir_all(upper.join(sub)).map_err(io("create", &upper.join(sub)))?;
            }
            upper.join("lower")
        }
        (None, Some(t)) => {
            std::fs::create_dir_all(&t.staging).map_err(io("create", &t.staging))?;
            t.staging.clone()
        }
        (None, None) => return Ok(mountpoint.to_path_buf()),
    };
    private.canonicalize().map_err(io("resolve", &private))
}

/// Bind-mounts `source` (the FUSE layer) at `target`. A bind mount keeps its source's
/// per-mount flags, so the image stays read-only, `nosuid` and `nodev` (a remount through
/// `target` would reach the directory under the new mount, not the mount).
fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    rustix::mount::mount_bind(source, target).map_err(std::io::Error::from)
}

/// For a mount with a holder: starts it on the connection and attaches the open table
/// that a successor will need.
fn hold(
    fs: &ThawFs,
    fuse: std::os::fd::BorrowedFd<'_>,
    options: &MountOptions,
) -> Result<Option<ProcessId>, MountError> {
    let Some(command) = &options.holder else {
        return Ok(None);
    };
    if let Some(path) = &options.open_table {
        let table = crate::opens::OpenTable::create(path, fs.shared().manifest.inodes.len())
            .map_err(io("create the open table", path))?;
        fs.shared().passthrough.attach(table);
    }
    Ok(Some(crate::takeover::spawn_holder(fuse, command)?))
}

/// fuser's settings for a mount: read-only, `nosuid`, `nodev`, kernel permission checks,
/// auto-unmount when asked (or when `fusermount3` exists), worker threads, each on a
/// cloned descriptor unless the mount is held: the kernel aborts the requests a cloned
/// descriptor's reader took when it closes, while those read from the held descriptor
/// can be resent to a successor.
fn fuse_config(fs: &ThawFs, options: &MountOptions) -> Config {
    let image = fs.shared().image;
    let mut mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        MountOption::FSName(format!("thaw:{}", image.short())),
        MountOption::Subtype("thaw".into()),
    ];
    if options.holder.is_none() && options.auto_unmount.unwrap_or_else(have_fusermount3) {
        mount_options.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = options.holder.is_none();
    config
}

/// Mounts an overlayfs at `mountpoint`: `lower` read-only under `upper/upper` (writes) and
/// `upper/work`.
fn mount_overlay(lower: &Path, upper: &Path, mountpoint: &Path) -> std::io::Result<()> {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.join("upper").display(),
        upper.join("work").display()
    );
    let data =
        CString::new(data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let flags = rustix::mount::MountFlags::empty();
    rustix::mount::mount("overlay", mountpoint, "overlay", flags, data.as_c_str())
        .map_err(std::io::Error::from)
}

/// The sysfs file holding the readahead of the filesystem mounted at `path`.
pub fn readahead_file(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)?.dev();
    Ok(PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    )))
}

fn set_kernel_readahead(fuse_dir: &Path, bytes: u64) -> std::io::Result<()> {
    let file = readahead_file(fuse_dir)?;
    std::fs::write(&file, format!("{}\n", bytes.div_ceil(1024)))
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", file.display())))
}

impl MountHandle {
    /// The process keeping the connection for a successor, if any.
    pub fn holder(&self) -> Option<ProcessId> {
        self.holder
    }

    /// Whether the kernel agreed to passthrough at the connection's init.
    pub fn passthrough_negotiated(&self) -> bool {
        self.fs.shared().passthrough.negotiated()
    }

    /// Where the image (or its overlay) is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Where the read-only FUSE layer is mounted (the mountpoint unless writable).
    pub fn fuse_dir(&self) -> &Path {
        &self.fuse_dir
    }

    /// The filesystem being served.
    pub fn fs(&self) -> &ThawFs {
        &self.fs
    }

    /// The mount's counters now, with the reader's.
    pub fn stats(&self) -> StatsSnapshot {
        let s = self.fs.shared();
        s.stats.snapshot(s.reader.stats(), s.passthrough_snapshot())
    }

    /// Whether the mount (the overlay, or the FUSE layer) is still in the mount table.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// Writes the start-up trace, if one is being recorded; returns the record count.
    pub fn write_trace(&self) -> std::io::Result<Option<usize>> {
        let s = self.fs.shared();
        s.trace.as_ref().map(|t| t.write(&s.manifest)).transpose()
    }

    /// Unmounts the overlay (if any) and the FUSE layer.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), MountError> {
        if self.top_layer {
            self.top_layer = false;
            if is_mounted(&self.mountpoint) {
                unmount(&self.mountpoint)?;
            }
        }
        if let Some(session) = self.session.take() {
            // Unmount ourselves rather than through fuser: with auto-unmount, fuser only
            // closes its socket to fusermount3, which then leaves a live mount in place.
            let detached =
                is_mounted(&self.fuse_dir) && unmount(&self.fuse_dir)? == Unmounted::Detached;
            if detached {
                // Still busy: the FUSE threads serve open files until they are closed.
                // Do not wait for that; they end with the process.
                std::mem::forget(session);
            } else {
                // Unmounted (by us or from outside): the kernel ends the connection and
                // the threads return. fuser's own umount would try a second unmount.
                session
                    .join()
                    .map_err(io("join the FUSE threads of", &self.fuse_dir))?;
                // The connection has ended, so the holder is leaving by itself.
                if let Some(h) = self.holder.take() {
                    crate::takeover::stop_holder(h);
                }
            }
        }
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}
