//! A client of the daemon's API, for `thaw prewarm`, `thaw jobs` and `thaw cache`.

use crate::api;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the daemon is not there, or the connection failed.
    #[error("{url}: {source}")]
    Http {
        /// The request's URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The daemon answered with an error.
    #[error("{url}: {status} {code:?}: {message}")]
    Api {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The stable error code, if the body had one.
        code: Option<api::ErrorCode>,
        /// The message.
        message: String,
    },
}

/// Talks to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the daemon's socket, `unix:/run/thaw/thaw.sock` (the daemon checks who
    /// is calling; no token), or a TCP address like `http://10.0.0.5:7411` (a token).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let (base, http) = match base.strip_prefix("unix:") {
            Some(socket) => {
                let http = reqwest::Client::builder()
                    .unix_socket(std::path::PathBuf::from(socket))
                    .build()
                    .unwrap_or_default();
                ("http://thaw".to_string(), http)
            }
            None => (
                base.trim_end_matches('/').to_string(),
                reqwest::Client::new(),
            ),
        };
        Client { base, token, http }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(http);
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<api::ErrorBody>(&text) {
            Ok(b) => (Some(b.error.code), b.error.message),
            Err(_) => (None, text),
        };
        Err(ClientError::Api {
            url,
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// `POST /v1/prewarm`: starts (or joins) a prewarm job.
    pub async fn prewarm(&self, req: &api::PrewarmRequest) -> Result<api::Job, ClientError> {
        self.call(reqwest::Method::POST, "/v1/prewarm", Some(req))
            .await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<api::Job, ClientError> {
        self.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None::<&()>)
            .await
    }

    /// `GET /v1/jobs`.
    pub async fn jobs(&self) -> Result<Vec<api::Job>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/jobs", None::<&()>)
            .await
    }

    /// `DELETE /v1/jobs/{id}`: cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<api::Job, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/jobs/{id}"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/cache`.
    pub async fn cache(&self) -> Result<api::Cache, ClientError> {
        self.call(reqwest::Method::GET, "/v1/cache", None::<&()>)
            .await
    }

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<api::Image>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/images", None::<&()>)
            .await
    }

    /// `POST /v1/mounts`.
    pub async fn mount(&self, req: &api::MountRequest) -> Result<api::Mount, ClientError> {
        self.call(reqwest::Method::POST, "/v1/mounts", Some(req))
            .await
    }

    /// `GET /v1/mounts`.
    pub async fn mounts(&self) -> Result<Vec<api::Mount>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/mounts", None::<&()>)
            .await
    }

    /// `DELETE /v1/mounts/{id}`.
    pub async fn unmount(&self, id: &str) -> Result<api::Mount, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/mounts/{id}"),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/containers`: starts a container the daemon owns.
    pub async fn create_container(
        &self,
        req: &api::ContainerRequest,
    ) -> Result<api::Container, ClientError> {
        self.call(reqwest::Method::POST, "/v1/containers", Some(req))
            .await
    }

    /// `GET /v1/containers`.
    pub async fn containers(&self) -> Result<Vec<api::Container>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/containers", None::<&()>)
            .await
    }

    /// `GET /v1/autoscale`: every autoscaled deployment as its control loop last saw it.
    pub async fn autoscale(&self) -> Result<Vec<api::DeploymentStatus>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/autoscale", None::<&()>)
            .await
    }

    /// `POST /v1/deployments/{name}/signals`: a gateway's signals for a push deployment;
    /// answers with the deployment's status (its replicas and their ports).
    pub async fn push_signals(
        &self,
        deployment: &str,
        signals: &api::Signals,
    ) -> Result<api::DeploymentStatus, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/deployments/{deployment}/signals"),
            Some(signals),
        )
        .await
    }

    /// `POST /v1/containers/{id}/stop`: the stop signal, then SIGKILL after the timeout;
    /// answers once the container has exited.
    pub async fn stop_container(
        &self,
        id: &str,
        req: &api::StopRequest,
    ) -> Result<api::Container, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/containers/{id}/stop"),
            Some(req),
        )
        .await
    }

    /// `GET /v1/containers/{id}/logs`: its output and errors so far (the last MiB).
    pub async fn container_logs(&self, id: &str) -> Result<String, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/containers/{id}/logs"),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/containers/{id}`: forgets an exited container and removes its directory.
    pub async fn remove_container(&self, id: &str) -> Result<api::Container, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/containers/{id}"),
            None::<&()>,
        )
        .await
    }
}
