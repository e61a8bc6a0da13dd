//! The generated edge-case tree: every file type and metadata corner thaw must keep.

use crate::pseudo_random;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// Logical size of the sparse file in the edge-case tree: past 4 GiB, so 32-bit offsets
/// would show.
pub const SPARSE_LEN: u64 = 5 << 30;

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    // SAFETY: valid C string and timespec array for the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn mknod(path: &Path, mode: u32, dev: u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: valid C string for the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Writes the edge-case tree into `root` (which must exist and be empty). Needs root.
pub fn make_edge_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    std::fs::create_dir_all(p("dir/sub")).unwrap();
    std::fs::write(p("empty"), b"").unwrap();
    std::fs::write(p("small.txt"), b"hello, thaw\n").unwrap();
    std::fs::write(p("dir/random.bin"), pseudo_random(5 * 1024 * 1024 + 123, 7)).unwrap();
    // The same bytes under another name: deduplicated, not a hard link.
    std::fs::write(
        p("dir/sub/random-copy.bin"),
        pseudo_random(5 * 1024 * 1024 + 123, 7),
    )
    .unwrap();
    std::fs::write(p("zeros-dense"), vec![0u8; 600_000]).unwrap();

    // Sparse: 5 GiB with data at 1 GiB, just past 4 GiB, and at the end.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(p("sparse.img")).unwrap();
        f.seek(SeekFrom::Start(1 << 30)).unwrap();
        f.write_all(&pseudo_random(1 << 20, 9)).unwrap();
        f.seek(SeekFrom::Start((4 << 30) + 12345)).unwrap();
        f.write_all(b"past four gibibytes").unwrap();
        f.seek(SeekFrom::Start(SPARSE_LEN - 5)).unwrap();
        f.write_all(b"tail!").unwrap();
    }

    // Hard links: three names, two directories.
    std::fs::write(p("hard-a"), b"linked content").unwrap();
    std::fs::hard_link(p("hard-a"), p("hard-b")).unwrap();
    std::fs::hard_link(p("hard-a"), p("dir/hard-c")).unwrap();

    symlink("does/not/exist", p("dangling")).unwrap();
    symlink("/etc/passwd", p("absolute")).unwrap();
    symlink("dir/sub", p("to-dir")).unwrap();

    mknod(&p("fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(&p("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    mknod(&p("loop9"), libc::S_IFBLK | 0o660, libc::makedev(7, 9));
    drop(std::os::unix::net::UnixListener::bind(p("socket")).unwrap());

    xattr::set(p("small.txt"), "user.comment", b"a comment").unwrap();
    xattr::set(p("small.txt"), "user.binary", &[0u8, 255, 1, 2]).unwrap();
    xattr::set(p("dir"), "user.dirattr", b"on a directory").unwrap();
    xattr::set(p("absolute"), "trusted.link", b"on a symlink").unwrap();

    let long = "L".repeat(255);
    std::fs::write(root.join(&long), b"long name").unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"non-utf8-\xff\xfe")), b"bytes").unwrap();
    std::fs::write(root.join("new\nline"), b"newline in name").unwrap();

    let mut deep = root.join("deep");
    for i in 0..64 {
        deep.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom"), b"deep").unwrap();

    std::fs::write(p("setuid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(p("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(p("setgid-dir")).unwrap();
    std::fs::set_permissions(p("setgid-dir"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::create_dir(p("sticky")).unwrap();
    std::fs::set_permissions(p("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(p("no-perms"), b"x").unwrap();
    std::fs::set_permissions(p("no-perms"), std::fs::Permissions::from_mode(0o000)).unwrap();

    std::os::unix::fs::lchown(p("small.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(p("dir/sub"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::lchown(p("dangling"), Some(7), Some(8)).unwrap();

    set_mtime(&p("small.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&p("dangling"), 1_500_000_000, 1);
    set_mtime(&p("null"), 0, 999_999_999);
    set_mtime(&p("dir/sub"), 1_700_000_000, 42);
    set_mtime(&p("dir"), 1_700_000_001, 43);
}
