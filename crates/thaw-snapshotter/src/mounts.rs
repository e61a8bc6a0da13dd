//! The mounts containerd performs for a snapshot: a bind of its directory, or an
//! overlay of its parents' directories (and lazy layers' mounts) under it.

/// One mount, as containerd's `containerd.types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    /// The source path (`overlay` for overlays).
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// The mounts of a snapshot whose own directories are `fs` and `work` and whose
/// parents' trees are `lowers`, nearest first. A writable snapshot with no parent is
/// a bind of its directory; a view of one tree is a read-only bind of it.
pub(crate) fn mounts_for(
    writable: bool,
    fs: &std::path::Path,
    work: &std::path::Path,
    lowers: &[std::path::PathBuf],
) -> Vec<Mount> {
    let bind = |path: &std::path::Path, rw: bool| Mount {
        kind: "bind".into(),
        source: path.display().to_string(),
        options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
    };
    let lowerdir = || {
        let dirs: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        format!("lowerdir={}", dirs.join(":"))
    };
    match (writable, lowers) {
        (true, []) => vec![bind(fs, true)],
        (false, []) => vec![bind(fs, false)],
        (false, [one]) => vec![bind(one, false)],
        (false, _) => vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![lowerdir()],
        }],
        (true, _) => vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", work.display()),
                format!("upperdir={}", fs.display()),
                lowerdir(),
            ],
        }],
    }
}
