//! The daemon's shared state: the repository, the one reader (so one memory and one disk
//! cache) every mount and job reads through, the jobs, the mounts, and recently used
//! manifests; and the two things every route needs from them: an image's manifest and
//! the chunks a prewarm scope names.

use crate::error::ApiError;
use crate::{containers, http, jobs, mounts, ServeError, ServerConfig};
use std::sync::Arc;
use std::time::Instant;
use thaw_api::api::{self, NamedScope, Scope};
use thaw_core::{ChunkId, ImageId, Manifest};
use thaw_store::{ChunkReader, Repository};

/// The daemon's shared state.
#[derive(Debug)]
pub struct Node {
    /// The store's repository.
    pub repo: Repository,
    /// One reader, so one memory and one disk cache, for every mount and job.
    pub reader: Arc<ChunkReader>,
    /// Prewarm jobs.
    pub jobs: Arc<jobs::Jobs>,
    /// Mounts.
    pub mounts: mounts::Mounts,
    /// Containers it owns (`thaw run --detach`).
    pub containers: Arc<containers::Containers>,
    /// Who may call, and how often.
    pub access: crate::Access,
    /// Mounts and prewarms must name images by full id.
    pub require_image_ids: bool,
    /// When the daemon started.
    pub started: Instant,
    /// HTTP responses by status class.
    pub http: http::HttpStats,
    /// What each autoscaled deployment's loop last saw and decided.
    pub autoscale: crate::autoscale::StatusBoard,
    /// The latest signals gateways pushed, per deployment with `push = true`.
    pub signals: crate::autoscale::SignalBoard,
    /// Weights kept decompressed in shared memory, when the daemon keeps any.
    pub resident: Option<Arc<thaw_gpu::resident::ResidentTier>>,
    /// Recently used manifests: images are immutable, so a prewarm's manifest serves the
    /// mount that follows without another request.
    manifests: parking_lot::Mutex<lru::LruCache<ImageId, Arc<Manifest>>>,
}

impl Node {
    /// The daemon's state for `config` (cleans up after dead mount processes).
    pub fn new(repo: Repository, config: &ServerConfig) -> Result<Arc<Self>, ServeError> {
        let reader = ChunkReader::new(repo.packs().clone(), config.reader.clone())?;
        let state = &config.mounts.state_dir;
        let mounts =
            mounts::Mounts::open(config.mounts.clone()).map_err(|source| ServeError::Io {
                what: "opening the state directory",
                path: state.display().to_string(),
                source,
            })?;
        let io = |what| {
            move |source| ServeError::Io {
                what,
                path: state.display().to_string(),
                source,
            }
        };
        let containers = containers::Containers::open(containers::ContainerSettings {
            dir: state.join("containers"),
            runtime_root: state.join("runtime"),
            records: thaw_run::ContainerRegistry::node(),
            mounts: config.mounts.registry.clone(),
            api_address: config.mounts.api_address.clone(),
            holder: config.mounts.holder.clone(),
        })
        .map_err(io("opening the containers' directory"))?;
        Ok(Arc::new(Node {
            repo,
            reader,
            jobs: Arc::default(),
            mounts,
            containers: Arc::new(containers),
            access: crate::Access::new(
                config.tokens.clone(),
                config.socket_group,
                config.rate_limit,
            ),
            require_image_ids: config.require_image_ids,
            started: Instant::now(),
            http: http::HttpStats::default(),
            autoscale: crate::autoscale::StatusBoard::default(),
            signals: crate::autoscale::SignalBoard::default(),
            resident: (config.weights.resident_bytes > 0).then(|| {
                Arc::new(thaw_gpu::resident::ResidentTier::new(
                    config.weights.resident_bytes,
                ))
            }),
            manifests: parking_lot::Mutex::new(lru::LruCache::new(MANIFESTS_CACHED)),
        }))
    }

    /// An image's manifest, from memory when recently used.
    pub async fn manifest(&self, id: &ImageId) -> Result<Arc<Manifest>, ApiError> {
        if let Some(m) = self.manifests.lock().get(id) {
            return Ok(m.clone());
        }
        let m = Arc::new(self.repo.get_manifest(id).await?);
        self.repo
            .ensure_packs_for(m.chunks.iter().map(|c| c.id))
            .await?;
        self.manifests.lock().put(*id, m.clone());
        Ok(m)
    }
}

/// Manifests the daemon keeps in memory.
const MANIFESTS_CACHED: std::num::NonZeroUsize = std::num::NonZeroUsize::new(32).unwrap();

impl Node {
    /// Starts a prewarm of `scope` in `image`, or joins the running one that does the same;
    /// the bool is whether a new job was made.
    pub async fn prewarm(
        &self,
        image: ImageId,
        scope: Scope,
    ) -> Result<(Arc<jobs::Job>, bool), ApiError> {
        if let Some(j) = self.jobs.running(&image, &scope) {
            return Ok((j, false));
        }
        let list = self.chunk_list(&image, &scope).await?;
        self.jobs.start(&self.reader, image, scope, list)
    }

    /// A prewarm that then loads `weights` (files of the image) into the resident tier.
    /// With weights, an image without a start-up trace warms no other chunks (the
    /// weights' own are read by their load) rather than failing.
    pub async fn prewarm_weights(
        &self,
        image: ImageId,
        scope: Scope,
        weights: Vec<String>,
    ) -> Result<(Arc<jobs::Job>, bool), ApiError> {
        let tier = self.resident.clone().ok_or_else(|| {
            ApiError::invalid(
                "this daemon keeps no resident weights (start it with --resident-weights)",
            )
        })?;
        if weights.len() > api::MAX_PREWARM_WEIGHTS {
            return Err(ApiError::invalid(format!(
                "a prewarm names at most {} weight files, not {}",
                api::MAX_PREWARM_WEIGHTS,
                weights.len()
            )));
        }
        for w in &weights {
            crate::validate::image_path(w)?;
        }
        let list = match self.chunk_list(&image, &scope).await {
            Ok(list) => list,
            Err(e) if e.code == api::ErrorCode::NoTrace => Vec::new(),
            Err(e) => return Err(e),
        };
        let step = jobs::WeightsStep {
            tier,
            manifest: self.manifest(&image).await?,
            paths: weights,
        };
        self.jobs
            .start_with(&self.reader, image, scope, list, Some(step))
    }

    /// The chunks a scope names, in the order to fetch them.
    async fn chunk_list(&self, image: &ImageId, scope: &Scope) -> Result<Vec<ChunkId>, ApiError> {
        match scope {
            Scope::Named(NamedScope::All) => Ok(self
                .manifest(image)
                .await?
                .chunks
                .iter()
                .map(|c| c.id)
                .collect()),
            Scope::Named(NamedScope::Trace) => {
                // No manifest needed: the list names chunks, and the store checks the
                // image exists by holding its traces.
                let list = self.repo.prefetch_list(image).await?;
                if list.is_empty() {
                    self.manifest(image).await?; // an unknown image is a 404, not "no trace"
                    return Err(ApiError::new(
                        api::ErrorCode::NoTrace,
                        format!("image {image} has no start-up trace; push one with `thaw trace push`, or prewarm with scope \"all\""),
                    ));
                }
                self.repo
                    .ensure_packs_for(list.iter().map(|r| r.chunk))
                    .await?;
                Ok(list.into_iter().map(|r| r.chunk).collect())
            }
            Scope::Paths { paths } => jobs::paths_chunks(&*self.manifest(image).await?, paths),
        }
    }
}
