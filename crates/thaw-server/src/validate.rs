//! Checks on what clients send: image references and paths inside an image. (Mount
//! points are confined in `confine`.)

use crate::error::ApiError;
use thaw_api::api::MAX_NAME_BYTES;

/// An image reference: a full image id, or (unless `ids_only`) a tag or id prefix.
/// Bounded, printable, no whitespace.
pub fn image_ref(s: &str, ids_only: bool) -> Result<&str, ApiError> {
    if ids_only && !(s.len() == 64 && thaw_core::id::is_hex_prefix(s)) {
        return Err(ApiError::invalid(format!(
            "this daemon takes full image ids only, not {s:?} (--require-image-ids)"
        )));
    }
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

/// Checks a `POST /v1/containers` body's limits and names, as the handler does before it
/// resolves anything on the host.
pub fn container_request(req: &crate::api::ContainerRequest) -> Result<(), ApiError> {
    crate::container_request::check_request(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert!(image_ref("debian:bookworm", false).is_ok());
        assert!(image_ref("debian:bookworm", true).is_err());
        assert!(image_ref(&"ab".repeat(32), true).is_ok());
        assert!(image_ref("", false).is_err());
        assert!(image_ref("a b", false).is_err());
        assert!(image_ref("x\n", false).is_err());
        assert!(image_ref(&"a".repeat(300), false).is_err());
    }

    #[test]
    fn image_paths() {
        assert_eq!(image_path("/usr//bin/./ls").unwrap(), ["usr", "bin", "ls"]);
        assert!(image_path("/").unwrap().is_empty());
        assert!(image_path("/usr/../etc").is_err());
        assert!(image_path("a\0b").is_err());
    }
}
