//! Weights resident on the node and their hand-off: files and sharded checkpoints loaded
//! into sealed memfds, handed over a unix socket with `SCM_RIGHTS`, mapped by the client
//! and compared tensor by tensor with the source; the tier's bound; a client that dies in
//! the middle leaves the server serving.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

mod common;
use common::{every_dtype, image_of, thaw_tests_bytes};
use rustix::fd::OwnedFd;
use rustix::mm::{MapFlags, ProtFlags};
use std::path::Path;
use std::sync::Arc;
use thaw_core::{ImageId, Manifest};
use thaw_gpu::handoff::{self, HandoffReply, HandoffRequest, ModelSource};
use thaw_gpu::resident::{ResidentModel, ResidentTier};
use thaw_gpu::LoadError;
use thaw_store::ChunkReader;

/// A tier over one image, resolving every request to it.
struct OneImage {
    tier: ResidentTier,
    reader: Arc<ChunkReader>,
    manifest: Manifest,
    image: ImageId,
}

#[async_trait::async_trait]
impl ModelSource for OneImage {
    async fn model(&self, request: &HandoffRequest) -> Result<Arc<ResidentModel>, String> {
        self.tier
            .get_or_load(
                self.reader.clone(),
                &self.manifest,
                self.image,
                &request.path,
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Two shards and their index, as `transformers` writes them.
fn sharded(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut shards = Vec::new();
    let mut map = Vec::new();
    for s in 0..2u64 {
        let name = format!("model-0000{}-of-00002.safetensors", s + 1);
        let data = thaw_tests_bytes(3 << 20, 40 + s);
        let header = format!(
            r#"{{"layer.{s}.weight":{{"dtype":"BF16","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            data.len() / 2,
            data.len()
        );
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(&data);
        std::fs::write(dir.join(&name), &f).unwrap();
        map.push(format!(r#""layer.{s}.weight":"{name}""#));
        shards.push((name, f));
    }
    let index = format!(
        r#"{{"metadata":{{"total_size":{}}},"weight_map":{{{}}}}}"#,
        6 << 20,
        map.join(",")
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    shards
}

/// Maps a handed-over memfd read-only.
fn map(fd: &OwnedFd, len: u64) -> &'static [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: a shared read-only mapping of a sealed memfd of `len` bytes, never unmapped
    // (the test process ends soon).
    unsafe {
        let p = rustix::mm::mmap(
            std::ptr::null_mut(),
            len as usize,
            ProtFlags::READ,
            MapFlags::SHARED,
            fd,
            0,
        )
        .unwrap();
        std::slice::from_raw_parts(p.cast::<u8>(), len as usize)
    }
}

/// Every tensor of every handed file equals the source file's bytes.
fn assert_handed_equal(reply: &HandoffReply, fds: &[OwnedFd], sources: &[(String, Vec<u8>)]) {
    assert!(reply.ok, "{reply:?}");
    assert_eq!(fds.len(), reply.files.len());
    for (file, fd) in reply.files.iter().zip(fds) {
        let (_, src) = sources
            .iter()
            .find(|(n, _)| file.path.ends_with(n.as_str()))
            .unwrap();
        let header_len = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
        assert_eq!(
            file.header.as_bytes(),
            &src[8..8 + header_len],
            "the original header"
        );
        let data = &src[8 + header_len..];
        let header: serde_json::Value = serde_json::from_str(&file.header).unwrap();
        let mem = map(fd, file.len);
        for t in &file.tensors {
            assert_eq!(t.offset % 256, 0, "{} aligned", t.name);
            let offsets = &header[&t.name]["data_offsets"];
            let (lo, hi) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            let got = &mem[t.offset as usize..(t.offset + t.len) as usize];
            assert!(got == &data[lo..hi], "tensor {} of {}", t.name, file.path);
        }
        // Sealed: the client cannot change what others map.
        assert!(rustix::fs::ftruncate(fd, 0).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_sharded_checkpoints_are_handed_over_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("ckpt")).unwrap();
    let single = every_dtype(&src.join("all.safetensors"));
    let shards = sharded(&src.join("ckpt"));
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let image = ImageId::of(&manifest.encode());
    let source = Arc::new(OneImage {
        tier: ResidentTier::new(1 << 30),
        reader,
        manifest,
        image,
    });
    let socket = tmp.path().join("weights.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(handoff::serve(
        listener,
        source.clone(),
        stop.clone().cancelled_owned(),
    ));

    // A client that dies right after asking: the server carries on.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"image\":\"x\",\"path\":\"all.safetensors\"}\n")
            .unwrap();
    }
    let ask = |path: &'static str| {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || handoff::request(&socket, "x", path).unwrap())
    };
    let (reply, fds) = ask("all.safetensors").await.unwrap();
    assert_handed_equal(&reply, &fds, &[("all.safetensors".into(), single)]);
    assert_eq!(reply.files[0].tensors.len(), 15 * 2 + 1 + 3000);
    let (reply, fds) = ask("ckpt/model.safetensors.index.json").await.unwrap();
    assert_eq!(reply.files.len(), 2, "{reply:?}");
    assert_handed_equal(&reply, &fds, &shards);
    let (bad, fds) = ask("nosuch.safetensors").await.unwrap();
    assert!(!bad.ok && fds.is_empty());
    assert!(bad.error.unwrap().contains("nosuch"));
    let usage = source.tier.usage();
    // The dead client's request loaded `all` (or the next one did): loaded once, then hit.
    assert_eq!((usage.models, usage.loads), (2, 2), "{usage:?}");
    assert!(usage.hits >= 1, "{usage:?}");
    stop.cancel();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_stays_within_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let shards = sharded(&src);
    let (reader, manifest) = image_of(&src, &tmp.path().join("store")).await;
    let image = ImageId::of(&manifest.encode());
    // Room for one shard, not two.
    let tier = ResidentTier::new(5 << 20);
    for (name, _) in &shards {
        let m = tier
            .get_or_load(reader.clone(), &manifest, image, name)
            .await
            .unwrap();
        assert_eq!(m.files.len(), 1);
        let usage = tier.usage();
        assert!(usage.bytes <= usage.capacity, "{usage:?}");
    }
    let usage = tier.usage();
    assert_eq!((usage.models, usage.evictions), (1, 1), "{usage:?}");
    let err = tier
        .get_or_load(reader, &manifest, image, "model.safetensors.index.json")
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Resident(_)), "{err}");
    assert!(
        err.to_string().contains("more than the resident tier"),
        "{err}"
    );
}
