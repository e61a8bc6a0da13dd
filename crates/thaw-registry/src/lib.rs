//! Pulling an image from a registry (the OCI distribution API, `docker://HOST/NAME:TAG`)
//! into an OCI image layout, which `thaw_image` then builds (`oci:DIR`): the manifest (resolved to
//! this platform) and every layer, each checked against its digest as it is written.
//!
//! Anonymous bearer tokens are fetched when the registry asks for them. Plain HTTP is
//! used only for loopback registries; everything else is HTTPS. This is the only crate
//! besides `thaw-server` that speaks HTTP, and it knows nothing of stores or FUSE.

use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use thaw_image::oci::{self, Descriptor, ImageManifest, Index};

/// Why a pull failed: what failed, for which image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused, or sent something that is not the image.
    #[error("registry image {image}: {reason}")]
    Image {
        /// The image reference.
        image: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing the layout failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// `HOST[:PORT]/NAME[:TAG|@DIGEST]`, as after `docker://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry's host (and port).
    pub host: String,
    /// The repository's name (`library/debian` for a Docker Hub short name).
    pub name: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl ImageRef {
    /// Parses and validates a reference; `docker.io` names are read as `docker pull` reads them.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let bad = |why: &str| RegistryError::Image {
            image: s.to_string(),
            reason: why.to_string(),
        };
        let (host, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("expected HOST/NAME[:TAG]"))?;
        if host.is_empty() || rest.is_empty() {
            return Err(bad("expected HOST/NAME[:TAG]"));
        }
        let (name, reference) = if let Some((n, d)) = rest.split_once('@') {
            (n, d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t.to_string()),
                _ => (rest, "latest".to_string()),
            }
        };
        // Path components as the distribution spec allows them: lowercase alphanumerics,
        // separated inside by `.`, `_` or `-` (so never `.` or `..`).
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let name_ok = !name.is_empty()
            && name.split('/').all(|c| {
                let b = c.as_bytes();
                !b.is_empty()
                    && alnum(b[0])
                    && alnum(b[b.len() - 1])
                    && b.iter().all(|&x| alnum(x) || b"._-".contains(&x))
            });
        let ref_ok = !reference.is_empty()
            && reference.len() <= 128
            && reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
        if !name_ok || !ref_ok {
            return Err(bad("invalid repository name or tag"));
        }
        // Docker Hub's conventions, as `docker pull` applies them.
        let (host, name) = if host == "docker.io" {
            let name = if name.contains('/') {
                name.to_string()
            } else {
                format!("library/{name}")
            };
            ("registry-1.docker.io".to_string(), name)
        } else {
            (host.to_string(), name.to_string())
        };
        Ok(ImageRef {
            host,
            name,
            reference,
        })
    }

    fn base(&self) -> String {
        let host = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.host, self.name)
    }
}

struct Session<'a> {
    http: reqwest::Client,
    image: &'a ImageRef,
    token: Option<String>,
}

impl Session<'_> {
    fn err(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::Image {
            image: format!(
                "{}/{}:{}",
                self.image.host, self.image.name, self.image.reference
            ),
            reason: reason.into(),
        }
    }

    /// GETs `url`, fetching an anonymous token once if the registry asks for one.
    async fn get(&mut self, url: &str, accept: &str) -> Result<reqwest::Response, RegistryError> {
        for _ in 0..2 {
            let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.err(format!("GET {url}: {e}")))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| self.err(format!("GET {url}: 401 without a challenge")))?;
                self.token = Some(self.fetch_token(&challenge).await?);
                continue;
            }
            if !resp.status().is_success() {
                return Err(self.err(format!("GET {url}: {}", resp.status())));
            }
            return Ok(resp);
        }
        Err(self.err(format!("GET {url}: still unauthorized with a token")))
    }

    async fn fetch_token(&self, challenge: &str) -> Result<String, RegistryError> {
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| self.err(format!("unsupported authentication {challenge:?}")))?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                let v = v.trim_matches('"').to_string();
                match k {
                    "realm" => realm = Some(v),
                    "service" | "scope" => query.push((k.to_string(), v)),
                    _ => {}
                }
            }
        }
        let realm = realm.ok_or_else(|| self.err("token challenge without a realm"))?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let resp = self
            .http
            .get(&realm)
            .query(&query)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| self.err(format!("token from {realm}: {e}")))?;
        let body = limited_body(resp, oci::MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| self.err(format!("token from {realm}: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("token from {realm}: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| self.err(format!("token from {realm}: no token in the answer")))
    }

    /// A manifest or index by tag or digest: its media type and bytes (checked against
    /// the digest when one was asked for).
    async fn manifest(&mut self, reference: &str) -> Result<(String, Vec<u8>), RegistryError> {
        let url = format!("{}/manifests/{reference}", self.image.base());
        let resp = self.get(&url, ACCEPT).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let body = limited_body(resp, oci::MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| self.err(format!("GET {url}: {e}")))?;
        if reference.starts_with("sha256:") && sha256(&body) != reference {
            return Err(self.err(format!("manifest {reference} does not match its digest")));
        }
        Ok((media_type, body))
    }

    /// Streams a blob into `dir/blobs/sha256/<hex>`, checking digest and size.
    async fn blob(&mut self, dir: &Path, d: &Descriptor) -> Result<(), RegistryError> {
        let path = oci::blob_file(dir, &d.digest)
            .ok_or_else(|| self.err(format!("unsupported or malformed digest {:?}", d.digest)))?;
        let url = format!("{}/blobs/{}", self.image.base(), d.digest);
        let resp = self.get(&url, "*/*").await?;
        let mut file = std::fs::File::create(&path).map_err(io_err("create", &path))?;
        let (mut hasher, mut written) = (Sha256::new(), 0u64);
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| self.err(format!("GET {url}: {e}")))?;
            written += piece.len() as u64;
            if written > d.size {
                return Err(self.err(format!("blob {} is larger than {} bytes", d.digest, d.size)));
            }
            hasher.update(&piece);
            file.write_all(&piece).map_err(io_err("write", &path))?;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if written != d.size || got != d.digest {
            return Err(self.err(format!(
                "blob {} does not match its descriptor ({written} bytes, {got})",
                d.digest
            )));
        }
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn limited_body(resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| e.to_string())?;
        if (body.len() + piece.len()) as u64 > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// Pulls `image` into an OCI image layout at `dir` (which must exist) holding one image.
pub async fn pull_to_layout(image: &ImageRef, dir: &Path) -> Result<(), RegistryError> {
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| RegistryError::Image {
            image: image.name.clone(),
            reason: e.to_string(),
        })?;
    let mut s = Session {
        http,
        image,
        token: None,
    };
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_err("create", dir))?;
    let (mut media_type, mut body) = s.manifest(&image.reference).await?;
    if media_type == oci::MEDIA_INDEX || media_type == oci::MEDIA_DOCKER_LIST {
        let index: Index =
            serde_json::from_slice(&body).map_err(|e| s.err(format!("index: {e}")))?;
        let entry = oci::for_this_host(&index)
            .ok_or_else(|| s.err(format!("no image for linux/{}", oci::host_architecture())))?;
        let digest = entry.digest.clone();
        (media_type, body) = s.manifest(&digest).await?;
    }
    if media_type != oci::MEDIA_MANIFEST && media_type != oci::MEDIA_DOCKER_MANIFEST {
        return Err(s.err(format!("unsupported manifest media type {media_type:?}")));
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&body).map_err(|e| s.err(format!("manifest: {e}")))?;
    // The config blob carries the run configuration (entrypoint, env, user, ...).
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        s.blob(dir, blob).await?;
    }
    let digest = sha256(&body);
    let path = oci::blob_file(dir, &digest).unwrap_or_else(|| dir.join("blobs/sha256/manifest"));
    std::fs::write(&path, &body).map_err(io_err("write", &path))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": media_type, "digest": digest, "size": body.len()}],
    });
    let index_path = dir.join("index.json");
    std::fs::write(&index_path, index.to_string()).map_err(io_err("write", &index_path))?;
    let marker = dir.join("oci-layout");
    std::fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("write", &marker))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.name.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/app", "v1")
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000/v2/team/app");
        let r = ImageRef::parse("docker.io/debian").unwrap();
        assert_eq!(
            (r.host.as_str(), r.name.as_str(), r.reference.as_str()),
            ("registry-1.docker.io", "library/debian", "latest")
        );
        assert!(r.base().starts_with("https://"));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageRef::parse(&format!("r.example/x@{d}"))
                .unwrap()
                .reference,
            d
        );
        for bad in [
            "",
            "host",
            "host/",
            "h/UPPER",
            "h/a//b",
            "h/a:t/x y",
            "h/../x",
            "h/a:",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
