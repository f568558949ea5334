//! Where a Mastodon instance streams from (B.1): the streaming host named
//! by `/api/v2/instance`, then `/api/v1/instance`; and the streaming
//! server's health check that `probe` runs first.

use std::time::Duration;

use super::spec::BearerToken;

/// `GET /api/v1/streaming/health` on the streaming host (B.1): `Ok` with
/// the body when it answers 200.
pub async fn streaming_health(streaming_url: &str) -> Result<String, String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
    let url = format!("{}/api/v1/streaming/health", streaming_url.trim_end_matches('/'));
    let mut response = client.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.body().limit(4096).await.map_err(|e| format!("{url}: {e}"))?;
    let body = String::from_utf8_lossy(&body).trim().to_owned();
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{url}: HTTP {status} {body}"))
    }
}

/// Asks the instance API for the streaming host (B.1): v2, then v1. The
/// caller falls back to the instance host.
pub async fn discover_streaming_url(instance: &str, token: &BearerToken) -> Result<String, String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
    let base = instance.trim_end_matches('/');
    let mut last_error = String::new();
    for (path, pointer) in
        [("/api/v2/instance", "/configuration/urls/streaming"), ("/api/v1/instance", "/urls/streaming_api")]
    {
        let url = format!("{base}{path}");
        let response = client
            .get(&url)
            .insert_header((awc::http::header::AUTHORIZATION, format!("Bearer {}", token.expose())))
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        if !response.status().is_success() {
            last_error = format!("{url}: HTTP {}", response.status().as_u16());
            continue;
        }
        let body = match response.body().limit(1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        if let Some(streaming) = value.pointer(pointer).and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
            // SSE and the WebSocket URL are both derived from an http(s) base.
            return Ok(crate::settings::http_scheme(streaming).trim_end_matches('/').to_owned());
        }
        last_error = format!("{url}: no streaming URL in the answer");
    }
    Err(last_error)
}
