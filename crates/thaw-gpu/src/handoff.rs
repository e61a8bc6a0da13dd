//! The hand-off of resident weights to a serving process, over a unix socket.
//!
//! The client sends one JSON line, `{"image": IMAGE, "path": PATH}`. The daemon answers one
//! JSON line, [`HandoffReply`]: per file its original safetensors header and each
//! tensor's offset in that file's memory (multiples of 256). The first bytes of the answer
//! carry, as `SCM_RIGHTS`, one sealed memfd per file, in the reply's order. The client maps
//! them (read-only, or private copy-on-write) and has the tensors without a copy: on a GPU
//! node it registers the mapping as pinned memory and copies to its GPU at link speed.

use crate::resident::{HandedTensor, ResidentModel};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The largest request read.
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// The most files one answer carries (the kernel's limit on descriptors per message).
pub const MAX_FILES: usize = 253;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    /// The image: a tag or an id.
    pub image: String,
    /// A safetensors file in it, or a sharded checkpoint's `*.index.json`.
    pub path: String,
}

/// One file of the answer; its memfd is the one at the same position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedFile {
    /// The file in the image.
    pub path: String,
    /// Its original JSON header.
    pub header: String,
    /// The memfd's length.
    pub len: u64,
    /// Its tensors, where they are in the memfd.
    pub tensors: Vec<HandedTensor>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffReply {
    /// Whether the model is handed over.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The image's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The files.
    #[serde(default)]
    pub files: Vec<HandedFile>,
}

/// Finds (loading if needed) the model a request names.
#[async_trait::async_trait]
pub trait ModelSource: Send + Sync {
    /// The resident model, or a message for the client.
    async fn model(&self, request: &HandoffRequest) -> Result<Arc<ResidentModel>, String>;
}

/// Serves hand-offs on `listener` until `shutdown` completes; each connection on its own
/// task, so a slow or dead client holds up no one.
pub async fn serve(
    listener: UnixListener,
    source: Arc<dyn ModelSource>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let source = source.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, source.as_ref()).await {
                            tracing::info!(error = %e, "weights hand-off ended early");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a weights hand-off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn answer(stream: UnixStream, source: &dyn ModelSource) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST_BYTES);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let stream = reader.into_inner().into_inner();
    let reply = match serde_json::from_slice::<HandoffRequest>(&line) {
        Err(e) => Err(format!("a bad request: {e}")),
        Ok(request) => source.model(&request).await,
    };
    match reply {
        Ok(model) if model.files.len() > MAX_FILES => {
            let why = format!(
                "{} files; at most {MAX_FILES} per hand-off",
                model.files.len()
            );
            send(&stream, &refusal(why), &[]).await
        }
        Ok(model) => {
            let fds: Vec<BorrowedFd<'_>> = model.files.iter().map(|f| f.memory.fd()).collect();
            send(&stream, &reply_of(&model), &fds).await
        }
        Err(why) => send(&stream, &refusal(why), &[]).await,
    }
}

fn refusal(why: String) -> HandoffReply {
    HandoffReply {
        ok: false,
        error: Some(why),
        image: None,
        files: Vec::new(),
    }
}

fn reply_of(model: &ResidentModel) -> HandoffReply {
    HandoffReply {
        ok: true,
        error: None,
        image: Some(model.image.to_string()),
        files: model
            .files
            .iter()
            .map(|f| HandedFile {
                path: f.path.clone(),
                header: f.header.clone(),
                len: f.memory.len() as u64,
                tensors: f.tensors.clone(),
            })
            .collect(),
    }
}

/// Sends `reply` as one line, `fds` riding on its first bytes.
async fn send(
    stream: &UnixStream,
    reply: &HandoffReply,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let message = SendAncillaryMessage::ScmRights(fds);
    let mut space = vec![MaybeUninit::uninit(); message.size()];
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(std::io::Error::other("no room for the descriptors"));
            }
            rustix::net::sendmsg(
                stream.as_fd(),
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        });
        match attempt {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let mut rest = bytes.get(sent..).unwrap_or_default();
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A blocking client: asks for `path` of `image` at `socket`; the reply and its memfds.
pub fn request(
    socket: &std::path::Path,
    image: &str,
    path: &str,
) -> std::io::Result<(HandoffReply, Vec<OwnedFd>)> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let ask = HandoffRequest {
        image: image.to_owned(),
        path: path.to_owned(),
    };
    let mut line = serde_json::to_vec(&ask).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut first = vec![0u8; 64 << 10];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FILES))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut first)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    first.truncate(got.bytes);
    let mut reader = std::io::BufReader::new(stream);
    if !first.ends_with(b"\n") {
        reader.read_until(b'\n', &mut first)?;
    }
    let reply = serde_json::from_slice(&first).map_err(std::io::Error::other)?;
    Ok((reply, fds))
}
