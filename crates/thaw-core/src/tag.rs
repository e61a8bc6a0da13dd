//! Tag names: human names that point at image ids.

use crate::FormatError;

/// The longest tag name accepted.
pub const MAX_TAG_LEN: usize = 128;

/// Checks a tag name: 1 to 128 characters of `[A-Za-z0-9._:/@+-]`, not starting with
/// `.` or `-`, and not 64 hex digits (that would shadow an image id).
pub fn validate_tag(name: &str) -> Result<(), FormatError> {
    let bad = |reason| {
        Err(FormatError::BadTag {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_TAG_LEN {
        return bad("must be 1 to 128 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b))
    {
        return bad("allowed characters are A-Z a-z 0-9 . _ : / @ + -");
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad("a 64-digit hex name would shadow an image id");
    }
    Ok(())
}

/// The tag that names the flattened image of a containerd layer chain (`sha256:HEX`, a
/// chain id computed from the layers' `diff_ids`), for the containerd snapshotter; `None`
/// for anything that is not a sha256 chain id.
pub fn chain_tag(chain_id: &str) -> Option<String> {
    chain_hex(chain_id).map(|hex| format!("{CHAIN_TAG_PREFIX}{hex}"))
}

/// The 64 lowercase hex digits of a sha256 chain id (`sha256:HEX`), or `None`.
pub fn chain_hex(chain_id: &str) -> Option<&str> {
    let hex = chain_id.strip_prefix("sha256:")?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(hex)
}

/// Tags under this prefix are the snapshotter's chain references, not users' names.
pub const CHAIN_TAG_PREFIX: &str = "containerd/chain/sha256/";

/// Tags under this prefix name a layered image by its OCI manifest's digest.
pub const MANIFEST_TAG_PREFIX: &str = "containerd/manifest/sha256/";

/// The tag that names an image by the sha256 of its OCI manifest (64 hex digits).
pub fn manifest_tag(hex: &str) -> String {
    format!("{MANIFEST_TAG_PREFIX}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(validate_tag("debian:bookworm").is_ok());
        assert!(validate_tag("org/model@v1").is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag("a b").is_err());
        assert!(validate_tag(&"a".repeat(129)).is_err());
        assert!(validate_tag(&"ab".repeat(32)).is_err());
    }
}
