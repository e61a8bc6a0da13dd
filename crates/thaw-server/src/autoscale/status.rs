//! What each deployment's loop last saw and decided, for `GET /v1/autoscale`, `/metrics`
//! and `thaw autoscale status`.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use thaw_api::api::DeploymentStatus;

/// Every deployment's status, shared by the loops and the API.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, DeploymentStatus>>>,
}

impl StatusBoard {
    /// Replaces `status.name`'s entry.
    pub fn publish(&self, status: DeploymentStatus) {
        self.inner.lock().insert(status.name.clone(), status);
    }

    /// Every deployment, by name.
    #[must_use]
    pub fn all(&self) -> Vec<DeploymentStatus> {
        self.inner.lock().values().cloned().collect()
    }
}
