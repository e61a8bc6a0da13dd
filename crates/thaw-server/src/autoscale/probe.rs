//! Readiness probes: an HTTP URL that answers 2xx, or a command on the node that exits 0,
//! tried every `period_seconds` while a replica starts. A replica's start time (the
//! cold start the policy plans with) ends when its probe first passes.

use std::time::Duration;
use thaw_autoscale::config::ReadinessConfig;

/// Who is probed.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The replica's name.
    pub name: String,
    /// Its port.
    pub port: Option<u16>,
    /// Its main process.
    pub pid: Option<u32>,
}

/// Whether `target` is ready by `probe`; a probe that errs or takes longer than its
/// timeout says no.
pub(super) async fn ready(probe: &ReadinessConfig, target: &Target) -> bool {
    let limit = Duration::from_secs_f64(probe.timeout_seconds.clamp(0.001, 3600.0));
    match &probe.http {
        Some(url) => http(&url_for(url, target.port), limit).await,
        None => command(&probe.command, target, limit).await,
    }
}

/// `url` with `{port}` replaced by the replica's port.
pub(super) fn url_for(url: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => url.replace("{port}", &p.to_string()),
        None => url.to_owned(),
    }
}

async fn http(url: &str, limit: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(limit).build() else {
        return false;
    };
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn command(argv: &[String], target: &Target, limit: Duration) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("THAW_REPLICA", &target.name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(p) = target.port {
        cmd.env("THAW_PORT", p.to_string());
    }
    if let Some(pid) = target.pid {
        cmd.env("THAW_REPLICA_PID", pid.to_string());
    }
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(http: Option<&str>, command: &[&str]) -> ReadinessConfig {
        ReadinessConfig {
            http: http.map(String::from),
            command: command.iter().map(|s| (*s).to_string()).collect(),
            period_seconds: 1.0,
            timeout_seconds: 2.0,
        }
    }

    fn target(port: Option<u16>) -> Target {
        Target {
            name: "web-1".into(),
            port,
            pid: Some(4242),
        }
    }

    #[tokio::test]
    async fn a_command_probe_passes_on_exit_zero_with_the_replica_in_its_environment() {
        let ok = probe(
            None,
            &[
                "/bin/sh",
                "-c",
                "test \"$THAW_REPLICA $THAW_PORT $THAW_REPLICA_PID\" = 'web-1 8000 4242'",
            ],
        );
        assert!(ready(&ok, &target(Some(8000))).await);
        assert!(!ready(&ok, &target(Some(8001))).await);
        let mut slow = probe(None, &["/bin/sleep", "30"]);
        slow.timeout_seconds = 0.2;
        assert!(!ready(&slow, &target(None)).await);
        assert!(!ready(&probe(None, &["/nonexistent/probe"]), &target(None)).await);
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_2xx_only() {
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/no",
                axum::routing::get(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(
            ready(
                &probe(Some("http://127.0.0.1:{port}/ok"), &[]),
                &target(Some(port))
            )
            .await
        );
        assert!(
            !ready(
                &probe(Some("http://127.0.0.1:{port}/no"), &[]),
                &target(Some(port))
            )
            .await
        );
        assert!(
            !ready(
                &probe(Some("http://127.0.0.1:{port}/ok"), &[]),
                &target(Some(1))
            )
            .await
        );
    }
}
