//! The few system calls std does not wrap: mknod, and timestamps without following
//! symlinks. Everything else uses std and the `xattr` crate.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use thaw_core::Timestamp;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Creates a device node, FIFO or socket. `mode` includes the file type bits.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets atime and mtime (both to `mtime`) without following a symlink.
pub fn set_times_nofollow(path: &Path, mtime: Timestamp) -> io::Result<()> {
    let c = cstr(path)?;
    let ts = libc::timespec {
        tv_sec: mtime.sec as libc::time_t,
        tv_nsec: mtime.nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: `c` and `times` outlive the call; AT_FDCWD makes the path relative to the cwd.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
