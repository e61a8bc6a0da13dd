//! A client of the daemon's API, for `thaw prewarm`, `thaw jobs` and `thaw cache`.

use crate::api;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: {status} {code:?}: {message}")]
    Api {
        url: String,
        status: u16,
        code: Option<api::ErrorCode>,
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
    /// `base` is like `http://127.0.0.1:7411`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
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

    pub async fn prewarm(&self, req: &api::PrewarmRequest) -> Result<api::Job, ClientError> {
        self.call(reqwest::Method::POST, "/v1/prewarm", Some(req))
            .await
    }

    pub async fn job(&self, id: &str) -> Result<api::Job, ClientError> {
        self.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None::<&()>)
            .await
    }

    pub async fn jobs(&self) -> Result<Vec<api::Job>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/jobs", None::<&()>)
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<api::Job, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/jobs/{id}"),
            None::<&()>,
        )
        .await
    }

    pub async fn cache(&self) -> Result<api::Cache, ClientError> {
        self.call(reqwest::Method::GET, "/v1/cache", None::<&()>)
            .await
    }

    pub async fn images(&self) -> Result<Vec<api::Image>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/images", None::<&()>)
            .await
    }

    pub async fn mount(&self, req: &api::MountRequest) -> Result<api::Mount, ClientError> {
        self.call(reqwest::Method::POST, "/v1/mounts", Some(req))
            .await
    }

    pub async fn mounts(&self) -> Result<Vec<api::Mount>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/mounts", None::<&()>)
            .await
    }

    pub async fn unmount(&self, id: &str) -> Result<api::Mount, ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/mounts/{id}"),
            None::<&()>,
        )
        .await
    }
}
