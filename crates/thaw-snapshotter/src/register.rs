//! Makes an image known to a containerd from documents alone: its layer snapshots
//! through containerd's snapshots service (each Prepare names the layer's chain id, and
//! thaw's snapshotter answers that it has it), its config and manifest into containerd's
//! content store with the garbage-collection labels containerd's own unpacker writes, and
//! the image record, all under a lease so containerd's gc cannot take any of it half-way.
//! No layer blob is sent: containerd runs the image from thaw's snapshots.

use crate::proto::containerd::services::content::v1 as content;
use crate::proto::containerd::services::images::v1 as images;
use crate::proto::containerd::services::leases::v1 as leases;
use crate::proto::containerd::services::snapshots::v1 as snapshots;
use crate::proto::containerd::types::Descriptor;
use crate::TARGET_REF_LABEL;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// What containerd is to be told an image is.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// The image's name in containerd (`docker.io/library/x:latest`, `thaw.local/x`).
    pub name: String,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The manifest document.
    pub manifest: Vec<u8>,
    /// `sha256:HEX` of the manifest.
    pub manifest_digest: String,
    /// The config's media type.
    pub config_media_type: String,
    /// The config document.
    pub config: Vec<u8>,
    /// `sha256:HEX` of the config.
    pub config_digest: String,
    /// The layer blobs' digests, bottom first (referenced, never sent).
    pub layer_digests: Vec<String>,
    /// The chain id of each layer prefix, bottom first.
    pub chain_ids: Vec<String>,
}

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct Target {
    /// containerd's socket.
    pub address: PathBuf,
    /// The containerd namespace (`default`, or `k8s.io` for Kubernetes).
    pub namespace: String,
    /// The snapshotter's name in containerd's configuration (`thaw`).
    pub snapshotter: String,
}

/// What a registration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    /// Whether an image of that name existed and was pointed at the new manifest.
    pub replaced_image: bool,
    /// Documents containerd already held (only their labels were updated).
    pub documents_present: usize,
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// containerd's socket could not be reached.
    #[error("connecting to containerd at {address}: {reason}")]
    Connect {
        /// The socket.
        address: String,
        /// Why.
        reason: String,
    },
    /// A call failed.
    #[error("containerd {call}: {status}")]
    Call {
        /// Which call.
        call: &'static str,
        /// containerd's answer.
        status: Box<tonic::Status>,
    },
    /// The snapshotter prepared a new, empty snapshot instead of naming a layer it has:
    /// it does not know the layer (not thaw, or a daemon on another store).
    #[error(
        "snapshotter {snapshotter:?} does not have layer chain {chain}: is it `thaw serve` on \
         the store this image is in?"
    )]
    UnknownLayer {
        /// The snapshotter.
        snapshotter: String,
        /// The chain id it did not know.
        chain: String,
    },
    /// The request could not be made (a name not valid in a gRPC header).
    #[error("{0}")]
    Invalid(String),
}

/// How long the registration's lease lives if thaw dies before removing it.
const LEASE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Registers `image` with the containerd at `target`.
pub async fn register(target: &Target, image: &ImageRecord) -> Result<Registered, RegisterError> {
    let channel = connect(&target.address).await?;
    let namespace = header_value(&target.namespace)?;
    let lease_id = format!(
        "thaw-import-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let session = Session {
        channel,
        namespace,
        lease: header_value(&lease_id)?,
    };
    session.create_lease(&lease_id).await?;
    let result = session.register(target, image).await;
    // The lease only protects the steps above; the image's own references hold it now.
    let released = session.delete_lease(&lease_id).await;
    let registered = result?;
    released?;
    Ok(registered)
}

/// A gRPC channel over a unix socket (containerd's, a snapshotter's, a CRI runtime's).
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required and unused: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Connects to containerd's socket.
async fn connect(address: &Path) -> Result<Channel, RegisterError> {
    unix_channel(address)
        .await
        .map_err(|e| RegisterError::Connect {
            address: address.display().to_string(),
            reason: format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or(String::new(), ToString::to_string)
            ),
        })
}

fn header_value(s: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, RegisterError> {
    s.parse()
        .map_err(|_| RegisterError::Invalid(format!("{s:?} cannot be sent in a gRPC header")))
}

fn call_err(call: &'static str) -> impl FnOnce(tonic::Status) -> RegisterError {
    move |status| RegisterError::Call {
        call,
        status: Box::new(status),
    }
}

/// One registration: the channel, and the namespace and lease every call carries.
struct Session {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    lease: MetadataValue<tonic::metadata::Ascii>,
}

impl Session {
    /// A request in the namespace, under the lease.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.request_outside_lease(message);
        request
            .metadata_mut()
            .insert("containerd-lease", self.lease.clone());
        request
    }

    /// A request in the namespace alone: the lease's own creation and deletion.
    fn request_outside_lease<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        request
    }

    async fn create_lease(&self, id: &str) -> Result<(), RegisterError> {
        let expires =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now() + LEASE_EXPIRY)
                .to_string();
        let request = self.request_outside_lease(leases::CreateRequest {
            id: id.to_string(),
            labels: HashMap::from([("containerd.io/gc.expire".to_string(), expires)]),
        });
        leases::leases_client::LeasesClient::new(self.channel.clone())
            .create(request)
            .await
            .map_err(call_err("Leases.Create"))?;
        Ok(())
    }

    async fn delete_lease(&self, id: &str) -> Result<(), RegisterError> {
        let request = self.request_outside_lease(leases::DeleteRequest {
            id: id.to_string(),
            sync: false,
        });
        leases::leases_client::LeasesClient::new(self.channel.clone())
            .delete(request)
            .await
            .map_err(call_err("Leases.Delete"))?;
        Ok(())
    }

    async fn register(
        &self,
        target: &Target,
        image: &ImageRecord,
    ) -> Result<Registered, RegisterError> {
        self.layers(&target.snapshotter, &image.chain_ids).await?;
        let top = image.chain_ids.last().cloned().unwrap_or_default();
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{}", target.snapshotter),
            top,
        )]);
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            image.config_digest.clone(),
        )]);
        for (i, layer) in image.layer_digests.iter().enumerate() {
            manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.clone());
        }
        let mut registered = Registered::default();
        for (bytes, digest, labels) in [
            (&image.config, &image.config_digest, config_labels),
            (&image.manifest, &image.manifest_digest, manifest_labels),
        ] {
            if !self.write_content(bytes, digest, labels).await? {
                registered.documents_present += 1;
            }
        }
        registered.replaced_image = self.put_image(image).await?;
        Ok(registered)
    }

    /// Each layer prefix, bottom first, through containerd's snapshots service: thaw's
    /// snapshotter answers `AlreadyExists` for a chain it serves.
    async fn layers(&self, snapshotter: &str, chain_ids: &[String]) -> Result<(), RegisterError> {
        let mut client = snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mut parent = String::new();
        for (i, chain) in chain_ids.iter().enumerate() {
            let key = format!("thaw-import-{i}-{chain}");
            let prepared = client
                .prepare(self.request(snapshots::PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::from([(TARGET_REF_LABEL.to_string(), chain.clone())]),
                }))
                .await;
            match prepared {
                Err(status) if status.code() == Code::AlreadyExists => {}
                Err(status) => return Err(call_err("Snapshots.Prepare")(status)),
                Ok(_) => {
                    let _ = client
                        .remove(self.request(snapshots::RemoveSnapshotRequest {
                            snapshotter: snapshotter.to_string(),
                            key,
                        }))
                        .await;
                    return Err(RegisterError::UnknownLayer {
                        snapshotter: snapshotter.to_string(),
                        chain: chain.clone(),
                    });
                }
            }
            parent.clone_from(chain);
        }
        Ok(())
    }

    /// Writes a document with its labels; if containerd has it already, sets the labels
    /// on it. Returns whether it was written.
    async fn write_content(
        &self,
        bytes: &[u8],
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool, RegisterError> {
        let mut client = content::content_client::ContentClient::new(self.channel.clone());
        let message = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            r#ref: format!("thaw-import-{digest}"),
            total: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            expected: digest.to_string(),
            offset: 0,
            data: bytes.to_vec(),
            labels: labels.clone(),
        };
        let written = async {
            let mut responses = client
                .write(self.request(tokio_stream::iter([message])))
                .await?
                .into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        }
        .await;
        match written {
            Ok(()) => Ok(true),
            Err(status) if status.code() == Code::AlreadyExists => {
                self.label_content(digest, labels).await?;
                Ok(false)
            }
            Err(status) => Err(call_err("Content.Write")(status)),
        }
    }

    /// Sets `labels` on content containerd holds, leaving its other labels.
    async fn label_content(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RegisterError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        content::content_client::ContentClient::new(self.channel.clone())
            .update(self.request(content::UpdateRequest {
                info: Some(content::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(call_err("Content.Update"))?;
        Ok(())
    }

    /// Creates the image record, or points an existing one at the manifest. Returns
    /// whether one existed.
    async fn put_image(&self, image: &ImageRecord) -> Result<bool, RegisterError> {
        let record = images::Image {
            name: image.name.clone(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: image.manifest_media_type.clone(),
                digest: image.manifest_digest.clone(),
                size: i64::try_from(image.manifest.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        let created = client
            .create(self.request(images::CreateImageRequest {
                image: Some(record.clone()),
            }))
            .await;
        match created {
            Ok(_) => Ok(false),
            Err(status) if status.code() == Code::AlreadyExists => {
                client
                    .update(self.request(images::UpdateImageRequest {
                        image: Some(record),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                    }))
                    .await
                    .map_err(call_err("Images.Update"))?;
                Ok(true)
            }
            Err(status) => Err(call_err("Images.Create")(status)),
        }
    }
}
