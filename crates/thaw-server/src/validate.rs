//! Checks on what clients send: image references, paths inside an image, and mount
//! points on the host.

use crate::error::ApiError;
use std::path::{Component, Path, PathBuf};
use thaw_api::api::MAX_NAME_BYTES;

/// An image reference: a tag or an id (prefix). Bounded, printable, no whitespace.
pub fn image_ref(s: &str) -> Result<&str, ApiError> {
    if s.is_empty() || s.len() > 256 {
        return Err(ApiError::invalid(format!(
            "image reference must be 1 to 256 bytes, not {}",
            s.len()
        )));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid(format!(
            "image reference {s:?} contains {c:?}"
        )));
    }
    Ok(s)
}

/// A path inside an image, as components. `/` or empty is the root. `..` is refused
/// rather than resolved, so no path can mean more than it says.
pub fn image_path(p: &str) -> Result<Vec<String>, ApiError> {
    if p.len() > MAX_NAME_BYTES || p.contains('\0') {
        return Err(ApiError::invalid(format!(
            "path of {} bytes or with NUL refused",
            p.len()
        )));
    }
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ApiError::invalid(format!("path {p:?} contains '..'"))),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// A host mount point: absolute, without `..`, an existing directory, and under
/// `root` when the daemon was given one. Returns the canonical path.
pub fn mountpoint(p: &str, root: Option<&Path>) -> Result<PathBuf, ApiError> {
    if p.len() > MAX_NAME_BYTES || p.contains('\0') {
        return Err(ApiError::invalid("mountpoint too long or with NUL"));
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(ApiError::invalid(format!(
            "mountpoint {p:?} must be absolute"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(ApiError::invalid(format!("mountpoint {p:?} contains '..'")));
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| ApiError::invalid(format!("mountpoint {p:?}: {e}")))?;
    if !canonical.is_dir() {
        return Err(ApiError::invalid(format!(
            "mountpoint {p:?} is not a directory"
        )));
    }
    if let Some(root) = root {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if !canonical.starts_with(&root) || canonical == root {
            return Err(ApiError::invalid(format!(
                "mountpoint {p:?} is not under the daemon's mount root {}",
                root.display()
            )));
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert!(image_ref("debian:bookworm").is_ok());
        assert!(image_ref("").is_err());
        assert!(image_ref("a b").is_err());
        assert!(image_ref("x\n").is_err());
        assert!(image_ref(&"a".repeat(300)).is_err());
    }

    #[test]
    fn image_paths() {
        assert_eq!(image_path("/usr//bin/./ls").unwrap(), ["usr", "bin", "ls"]);
        assert!(image_path("/").unwrap().is_empty());
        assert!(image_path("/usr/../etc").is_err());
        assert!(image_path("a\0b").is_err());
    }

    #[test]
    fn mountpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let inside = tmp.path().join("m");
        std::fs::create_dir(&inside).unwrap();
        let s = inside.to_str().unwrap();
        assert!(mountpoint(s, None).is_ok());
        assert!(mountpoint(s, Some(tmp.path())).is_ok());
        assert!(mountpoint(tmp.path().to_str().unwrap(), Some(tmp.path())).is_err());
        assert!(mountpoint("/etc", Some(tmp.path())).is_err());
        assert!(mountpoint("relative", None).is_err());
        assert!(mountpoint(&format!("{s}/../m"), None).is_err());
        assert!(mountpoint(&format!("{s}/missing"), None).is_err());
    }
}
