//! The webhook actuator: replicas belong to an external orchestrator (a Kubernetes
//! controller, KEDA, a cloud's instance group), which is told the desired count over HTTP
//! and answers with how many replicas it has and how many are ready; those become the
//! replicas the policy sees.

use std::time::Duration;
use thaw_api::api::{WebhookReply, WebhookScale};
use thaw_autoscale::{ReplicaState, ReplicaView};
use tokio::time::Instant;

/// How often the count is sent again when it has not changed.
const RESEND: Duration = Duration::from_secs(15);
/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest reply read.
const MAX_REPLY_BYTES: usize = 64 << 10;

/// A webhook that could not be called.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The request failed (connection, timeout).
    #[error("webhook {url}: {source}")]
    Request {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// It answered with an error status or a reply that is not JSON.
    #[error("webhook {url}: {reason}")]
    Refused {
        /// Where.
        url: String,
        /// What it said.
        reason: String,
    },
}

/// One deployment's webhook.
#[derive(Debug)]
pub(super) struct Webhook {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    sent: Option<(u32, Instant)>,
    has: Option<(u32, u32)>,
}

impl Webhook {
    /// A webhook at `url`, called with `token` as its bearer token.
    pub(super) fn new(url: &str, token: Option<String>) -> Self {
        Webhook {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .unwrap_or_default(),
            url: url.to_owned(),
            token,
            sent: None,
            has: None,
        }
    }

    /// The orchestrator's replicas as the policy sees them: ready ones, and the rest
    /// starting (none until it has answered).
    pub(super) fn replicas(&self) -> Vec<ReplicaView> {
        let (all, ready) = self.has.unwrap_or((0, 0));
        let ready_view = ReplicaView {
            state: ReplicaState::Ready,
            active: 0,
            idle_since: None,
        };
        let starting = ReplicaView {
            state: ReplicaState::Starting,
            ..ready_view
        };
        (0..all)
            .map(|i| if i < ready { ready_view } else { starting })
            .collect()
    }

    /// Sends `scale` when its count changed or the last send is old.
    pub(super) async fn send(&mut self, scale: &WebhookScale) -> Result<(), WebhookError> {
        let due = self
            .sent
            .is_none_or(|(n, at)| n != scale.desired || at.elapsed() >= RESEND);
        if !due {
            return Ok(());
        }
        let reply = self.call(scale).await?;
        self.sent = Some((scale.desired, Instant::now()));
        let all = reply.replicas.unwrap_or(scale.desired);
        self.has = Some((all, reply.ready.unwrap_or(all).min(all)));
        Ok(())
    }

    async fn call(&self, scale: &WebhookScale) -> Result<WebhookReply, WebhookError> {
        let url = self.url.clone();
        let mut req = self.client.post(&self.url).json(scale);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let failed = |source| WebhookError::Request {
            url: url.clone(),
            source,
        };
        let mut response = req.send().await.map_err(failed)?;
        let refused = |reason: String| WebhookError::Refused {
            url: url.clone(),
            reason,
        };
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(refused(format!("a reply over {MAX_REPLY_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(refused(format!("{status}: {text}")));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(WebhookReply::default());
        }
        serde_json::from_slice(&body).map_err(|e| refused(format!("reply: {e}")))
    }
}
