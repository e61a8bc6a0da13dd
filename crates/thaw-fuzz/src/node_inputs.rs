//! What a node reads from its users and its own files: safetensors headers, HTTP API
//! bodies, the tokens file, containerd's filters, autoscaler configurations and traces.

use std::path::Path;
use thaw_api::api;

/// A safetensors file's start: the 8-byte length, then the JSON header. The file's size
/// is taken to be exactly what the header describes when the input's last byte is even,
/// and one byte more otherwise, so both the accepting and the refusing paths run.
pub fn safetensors_header(data: &[u8]) {
    let Ok(len) = thaw_gpu::WeightsHeader::header_len(data, "fuzz") else {
        return;
    };
    let header = data
        .get(..usize::try_from(len).unwrap_or(usize::MAX))
        .unwrap_or(data);
    let odd = data.last().is_some_and(|b| b & 1 == 1);
    // The claimed size: the header, data to match its last tensor, and a stray byte.
    let described =
        serde_json::from_slice::<serde_json::Value>(header.get(8..).unwrap_or_default())
            .ok()
            .and_then(|v| {
                v.as_object()?
                    .values()
                    .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                    .max()
            })
            .unwrap_or(0);
    let file_size = len.saturating_add(described).saturating_add(u64::from(odd));
    if let Ok(h) = thaw_gpu::WeightsHeader::parse(header, file_size, "fuzz") {
        assert_eq!(
            h.data_offset + h.data_len,
            file_size,
            "the data region is not the file's rest"
        );
        for t in &h.tensors {
            assert!(
                t.start <= t.end && t.end <= h.data_len,
                "a tensor lies outside the data"
            );
        }
    }
}

/// A request body of the daemon's HTTP API: the first byte picks which, the rest is the
/// JSON. What deserializes goes through the handler's own checks.
pub fn api_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let image = |s: &str| {
        let _ = thaw_server::validate::image_ref(s, false);
        let _ = thaw_server::validate::image_ref(s, true);
    };
    match which % 6 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<api::PrewarmRequest>(body) {
                image(&r.image);
                for w in &r.weights {
                    let _ = thaw_server::validate::image_path(w);
                }
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<api::MountRequest>(body) {
                image(&r.image);
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<api::ContainerRequest>(body) {
                image(&r.image);
                let _ = thaw_server::validate::container_request(&r);
            }
        }
        3 => {
            let _ = serde_json::from_slice::<api::StopRequest>(body);
        }
        4 => {
            let _ = serde_json::from_slice::<api::Signals>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<api::WebhookReply>(body);
        }
    }
}

/// The daemon's tokens file.
pub fn auth_tokens(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = thaw_server::auth::Tokens::parse(text);
    }
}

/// A containerd filter (`List`'s), matched against a snapshot with labels.
pub fn snapshot_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(filter) = thaw_snapshotter::Filter::parse(text) else {
        return;
    };
    let info = thaw_snapshotter::Info {
        name: "sha256:abc".into(),
        parent: String::new(),
        kind: thaw_snapshotter::Kind::Committed,
        created: std::time::UNIX_EPOCH,
        updated: std::time::UNIX_EPOCH,
        labels: [
            (
                "containerd.io/snapshot.ref".to_string(),
                "sha256:abc".to_string(),
            ),
            ("a".to_string(), String::new()),
        ]
        .into(),
    };
    let _ = filter.matches(&info);
}

/// An autoscaler configuration file.
pub fn autoscale_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = thaw_autoscale::config::parse(Path::new("fuzz.yaml"), text);
    }
}

/// A request trace for the simulator: the Azure CSV or `arrival,service` lines. What it
/// accepts is in arrival order.
pub fn autoscale_trace(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(requests) = thaw_autoscale::trace::parse_requests(Path::new("fuzz.csv"), text, 4) {
        assert!(
            requests.windows(2).all(|w| w[0].arrival <= w[1].arrival),
            "a trace came out of order"
        );
    }
}
