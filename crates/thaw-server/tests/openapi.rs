//! Keeps docs/openapi.yaml, the route table and the router in step.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step panics with its message"
)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::collections::BTreeSet;
use std::sync::Arc;
use thaw_api::api::{ErrorCode, ROUTES};
use thaw_server::{MountSettings, Node, ServerConfig};
use thaw_store::{BlobStore, ObjectStoreBackend, ReaderConfig, Repository};
use tower::ServiceExt;

fn spec() -> serde_yaml_ng::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_spec_documents_exactly_the_routes() {
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            let m = method.as_str().unwrap();
            if m != "parameters" {
                documented.insert((m.to_uppercase(), path.as_str().unwrap().to_string()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn the_spec_lists_every_error_code() {
    let spec = spec();
    let listed: BTreeSet<String> = spec["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let codes: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(listed, codes);
}

#[tokio::test]
async fn the_router_serves_every_route_in_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(ObjectStoreBackend::memory());
    let repo = Repository::open(store).await.unwrap();
    let config = ServerConfig {
        socket: tmp.path().join("thaw.sock"),
        socket_group: None,
        listen: None,
        tokens: thaw_server::auth::Tokens::default(),
        metrics_listen: None,
        rate_limit: None,
        require_image_ids: false,
        reader: ReaderConfig::default(),
        mounts: MountSettings {
            state_dir: tmp.path().join("state"),
            registry: thaw_fuse::registry::MountRegistry::new(tmp.path().join("mounts")),
            api_address: None,
            mount_root: tmp.path().join("mnt"),
            read_timeout: std::time::Duration::from_secs(5),
            threads: 1,
            kernel_readahead: 0,
            auto_unmount: false,
            holder: None,
        },
        ready_file: None,
        autoscale: Default::default(),
        weights: Default::default(),
        snapshotter: None,
    };
    let router = thaw_server::router(Node::new(repo, &config).unwrap());
    for (method, path) in ROUTES {
        let uri = path.replace("{id}", "0123");
        let body = if *method == "POST" { "{}" } else { "" };
        let req = Request::builder()
            .method(*method)
            .uri(&uri)
            .header("content-type", "application/json")
            .extension(axum::extract::ConnectInfo(thaw_server::auth::Peer::Unix {
                uid: 0,
                gid: 0,
                pid: None,
            }))
            .body(Body::from(body))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(!text.contains("no such route"), "{method} {path}: {text}");
    }
}
