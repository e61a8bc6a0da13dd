//! The HTTP layer: routes, bearer-token authentication, body limits, JSON errors with
//! stable codes, and per-status request counters.

use crate::auth::{Peer, Scope};
use crate::error::ApiError;
use crate::{validate, Node};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use thaw_api::api::{self, ErrorCode, MAX_BODY_BYTES};

/// Requests answered, by status class.
#[derive(Debug, Default)]
pub struct HttpStats {
    by_class: [AtomicU64; 5],
}

impl HttpStats {
    fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .into_iter()
            .zip(self.by_class.iter().map(|c| c.load(Relaxed)))
            .collect()
    }
}

/// A JSON body whose rejections (bad syntax, wrong fields, too large, wrong content
/// type) become API errors with stable codes.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection.status().as_u16() {
        413 => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        415 => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with Content-Type: application/json",
        ),
        422 => ApiError::invalid(text),
        _ => ApiError::new(ErrorCode::BadRequest, text),
    }
}

/// Builds the API router over a node. Serve it with connect info ([`Peer`]): every route
/// but `/healthz` checks who is calling and what they may do.
pub fn router(node: Arc<Node>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/images", get(images))
        .route("/v1/cache", get(cache))
        .route("/v1/prewarm", post(prewarm))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job).delete(cancel_job))
        .route("/v1/mounts", post(create_mount).get(mounts))
        .route("/v1/mounts/{id}", delete(remove_mount))
        .route("/v1/containers", post(create_container).get(containers))
        .route(
            "/v1/containers/{id}",
            get(container).delete(remove_container),
        )
        .route("/v1/containers/{id}/stop", post(stop_container))
        .route("/v1/containers/{id}/logs", get(container_logs))
        .route("/v1/autoscale", get(autoscale))
        .route("/v1/deployments/{name}/signals", post(push_signals))
        .route_layer(middleware::from_fn_with_state(node.clone(), authorize));
    Router::new()
        .route("/healthz", get(health))
        .merge(guarded)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(node.clone(), count))
        .with_state(node)
}

/// The router of `--metrics-listen`: `/metrics` and `/healthz`, read-only, no token (for
/// Prometheus and health probes); nothing else exists there.
pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .fallback(|| async { ApiError::not_found("only /metrics and /healthz are served here") })
        .with_state(node)
}

async fn count(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    node.http.count(response.status());
    response
}

/// The scope a route needs: reading is `read`, starting a prewarm `prewarm`, pushing a
/// deployment's signals `signals`, anything that mounts, cancels or deletes `admin`.
fn required_scope(method: &Method, path: &str) -> Scope {
    let signals = path
        .strip_prefix("/v1/deployments/")
        .and_then(|rest| rest.strip_suffix("/signals"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    match (method, path) {
        (&Method::GET | &Method::HEAD, _) => Scope::Read,
        (&Method::POST, "/v1/prewarm") => Scope::Prewarm,
        (&Method::POST, _) if signals => Scope::Signals,
        _ => Scope::Admin,
    }
}

/// Lets a caller in (or not), applies the per-caller rate limit and the route's scope,
/// and writes mutating calls to the audit log (target `thaw::audit`) with the caller.
async fn authorize(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(e) = node.access.limit(&peer) {
        return e.into_response();
    }
    let caller = match node.access.caller(&peer, req.headers()) {
        Ok(c) => c,
        Err(e) => {
            let mut r = e.into_response();
            if r.status() == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let scope = required_scope(&method, &path);
    if !caller.may(scope) {
        tracing::warn!(target: "thaw::audit", caller = %caller, %method, path, "refused: needs scope {scope:?}");
        return ApiError::forbidden(format!("this caller lacks the {scope:?} scope"))
            .into_response();
    }
    let response = next.run(req).await;
    if method != Method::GET && method != Method::HEAD {
        let status = response.status().as_u16();
        tracing::info!(target: "thaw::audit", caller = %caller, %method, path, status, "api call");
    }
    response
}

async fn health(State(node): State<Arc<Node>>) -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: node.started.elapsed().as_secs_f64(),
    })
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(&node),
    )
        .into_response()
}

async fn images(State(node): State<Arc<Node>>) -> Result<Json<Vec<api::Image>>, ApiError> {
    let tags = node.repo.list_tags().await?;
    let mut out = Vec::new();
    for (id, manifest_bytes) in node.repo.list_images().await? {
        out.push(api::Image {
            id: id.to_string(),
            tags: tags
                .iter()
                .filter(|(_, t)| *t == id)
                .map(|(n, _)| n.clone())
                .collect(),
            manifest_bytes,
            traces: node.repo.trace_keys(&id).await?.len(),
        });
    }
    Ok(Json(out))
}

fn ratio(hits: u64, misses: u64) -> Option<f64> {
    (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
}

async fn cache(State(node): State<Arc<Node>>) -> Json<api::Cache> {
    let r = node.reader.stats();
    let u = node.reader.cache_usage();
    Json(api::Cache {
        memory: api::Tier {
            bytes: u.memory_bytes,
            capacity: u.memory_capacity,
            entries: u.memory_entries,
            hits: r.memory_hits,
            misses: r.memory_misses,
            hit_ratio: ratio(r.memory_hits, r.memory_misses),
        },
        disk: api::Tier {
            bytes: u.disk_bytes,
            capacity: u.disk_capacity,
            entries: u.disk_entries,
            hits: r.disk_hits,
            misses: r.disk_misses,
            hit_ratio: ratio(r.disk_hits, r.disk_misses),
        },
        store: api::StoreUsage {
            fetched_chunks: r.fetched_chunks,
            fetched_bytes: r.fetched_bytes,
            prefetched_chunks: r.prefetched_chunks,
            prefetched_bytes: r.prefetched_bytes,
            integrity_failures: r.integrity_failures,
        },
    })
}

async fn prewarm(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<api::PrewarmRequest>,
) -> Result<Response, ApiError> {
    let image = node
        .repo
        .resolve(validate::image_ref(&req.image, node.require_image_ids)?)
        .await?;
    let (job, _new) = if req.weights.is_empty() {
        node.prewarm(image, req.scope).await?
    } else {
        node.prewarm_weights(image, req.scope, req.weights).await?
    };
    let location = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job.view()),
    )
        .into_response())
}

async fn jobs(State(node): State<Arc<Node>>) -> Json<Vec<api::Job>> {
    Json(node.jobs.list().iter().map(|j| j.view()).collect())
}

async fn job(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<api::Job>, ApiError> {
    node.jobs
        .get(&id)
        .map(|j| Json(j.view()))
        .ok_or_else(|| ApiError::not_found(format!("no job {id:?}")))
}

async fn cancel_job(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<api::Job>, ApiError> {
    node.jobs
        .cancel(&id)
        .map(|j| Json(j.view()))
        .ok_or_else(|| ApiError::not_found(format!("no job {id:?}")))
}

async fn create_mount(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<api::MountRequest>,
) -> Result<(StatusCode, Json<api::Mount>), ApiError> {
    let image = node
        .repo
        .resolve(validate::image_ref(&req.image, node.require_image_ids)?)
        .await?;
    // The prewarm starts at the same moment as the mount: both begin with a round trip.
    let prewarm = async {
        if req.prefetch != api::MountPrefetch::Trace {
            return None;
        }
        let scope = api::Scope::Named(api::NamedScope::Trace);
        match node.prewarm(image, scope).await {
            Ok(started) => Some(started),
            Err(e) if e.code == ErrorCode::NoTrace => None,
            Err(e) => {
                tracing::warn!(image = %image, error = %e.message, "no prewarm with the mount");
                None
            }
        }
    };
    let mount = async {
        let manifest = node.manifest(&image).await?;
        node.mounts
            .create(manifest, &node.reader, image, &req)
            .await
    };
    let (mounted, prewarm) = tokio::join!(mount, prewarm);
    let m = match mounted {
        Ok(m) => m,
        Err(e) => {
            // Cancel a prewarm this request started; one shared with others stays.
            if let Some((job, true)) = prewarm {
                node.jobs.cancel(&job.id);
            }
            return Err(e);
        }
    };
    *m.prefetch_job.lock() = prewarm.map(|(job, _)| job.id.clone());
    Ok((StatusCode::CREATED, Json(m.view())))
}

async fn mounts(State(node): State<Arc<Node>>) -> Json<Vec<api::Mount>> {
    Json(node.mounts.list().iter().map(|m| m.view()).collect())
}

async fn remove_mount(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<api::Mount>, ApiError> {
    Ok(Json(node.mounts.remove(&id).await?.view()))
}

async fn create_container(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<api::ContainerRequest>,
) -> Result<(StatusCode, Json<api::Container>), ApiError> {
    let image = node
        .repo
        .resolve(validate::image_ref(&req.image, node.require_image_ids)?)
        .await?;
    let manifest = node.manifest(&image).await?;
    let c = node
        .containers
        .create(manifest, &node.reader, image, &req)
        .await?;
    Ok((StatusCode::CREATED, Json(c.view())))
}

async fn autoscale(State(node): State<Arc<Node>>) -> Json<Vec<api::DeploymentStatus>> {
    Json(node.autoscale.all())
}

/// A gateway's signals for a `push = true` deployment; answers with the deployment's
/// status as its loop last published it (its replicas, and where they listen).
async fn push_signals(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    JsonBody(signals): JsonBody<api::Signals>,
) -> Result<(StatusCode, Json<api::DeploymentStatus>), ApiError> {
    use crate::autoscale::PushError;
    node.signals.push(&name, signals).map_err(|e| match e {
        PushError::NoSuchDeployment(_) => ApiError::not_found(e.to_string()),
        PushError::Invalid(_) => ApiError::invalid(e.to_string()),
    })?;
    let status = node
        .autoscale
        .all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_default();
    Ok((StatusCode::ACCEPTED, Json(status)))
}

async fn containers(State(node): State<Arc<Node>>) -> Json<Vec<api::Container>> {
    Json(node.containers.list().iter().map(|c| c.view()).collect())
}

async fn container(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<api::Container>, ApiError> {
    Ok(Json(node.containers.get(&id)?.view()))
}

async fn stop_container(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::StopRequest>,
) -> Result<Json<api::Container>, ApiError> {
    let timeout = std::time::Duration::from_secs(req.timeout_seconds.unwrap_or(10).min(3600));
    Ok(Json(node.containers.stop(&id, timeout).await?.view()))
}

async fn container_logs(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<String>, ApiError> {
    Ok(Json(node.containers.logs(&id)?))
}

async fn remove_container(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<api::Container>, ApiError> {
    Ok(Json(node.containers.remove(&id).await?.view()))
}
