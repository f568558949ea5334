//! Opening a streaming connection over HTTP (a chunked body, an SSE stream)
//! or as a WebSocket upgrade, and what a refusal means: a final status, or a
//! wait on the HTTP or rate-limit schedule with `Retry-After` kept.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::link::{snippet, Link};
use crate::error::{DisconnectCause, StreamError};

/// An awc client for one connection: the stall timeout bounds the wait for
/// the response headers (awc's own timeout covers connect-to-headers only).
pub fn client(stall_timeout: Duration) -> awc::Client {
    awc::Client::builder()
        .timeout(stall_timeout)
        .add_default_header((awc::http::header::USER_AGENT, concat!("streamherd/", env!("CARGO_PKG_VERSION"))))
        .finish()
}

/// How the body of an accepted response is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Bytes as read; the family frames them.
    Chunks,
    /// `text/event-stream`, parsed into events.
    Sse,
}

/// Waits for the response to `send`; a 200 becomes a [`Link`], anything
/// else the [`refusal`] it means (`fatal` lists the final statuses).
pub async fn open(
    id: &Arc<str>,
    send: awc::SendClientRequest,
    body: BodyKind,
    fatal: &[u16],
    max_message_bytes: usize,
) -> Result<Link, StreamError> {
    let mut response = send.await.map_err(StreamError::network)?;
    if response.status().as_u16() != 200 {
        return Err(refusal(id, &mut response, fatal).await);
    }
    let stream = Box::pin(response);
    Ok(match body {
        BodyKind::Chunks => Link::body(id.clone(), stream),
        BodyKind::Sse => Link::sse(id.clone(), stream, max_message_bytes),
    })
}

/// Upgrades to a WebSocket within `timeout` (a silent server counts as a
/// stall); a refused upgrade is a [`refusal_of`] its status.
pub async fn open_websocket(
    id: &Arc<str>,
    request: awc::ws::WebsocketsRequest,
    timeout: Duration,
    fatal: &[u16],
    max_message_bytes: usize,
) -> Result<Link, StreamError> {
    let connect = request.max_frame_size(max_message_bytes).connect();
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(StreamError::Retryable(DisconnectCause::Stall)),
        Ok(Err(awc::error::WsClientError::InvalidResponseStatus(status))) => {
            Err(refusal_of(id, status.as_u16(), None, "WebSocket upgrade refused", fatal))
        }
        Ok(Err(e)) => Err(StreamError::network(e)),
        Ok(Ok((_, framed))) => Ok(Link::websocket(id.clone(), framed, max_message_bytes)),
    }
}

/// What a response other than 200 means for the connection: a `fatal`
/// status is final (the reason carries the body); 420/429 back off on the
/// rate-limit schedule, anything else on the HTTP one (`Retry-After` kept).
pub async fn refusal<S>(connection: &str, response: &mut awc::ClientResponse<S>, fatal: &[u16]) -> StreamError
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(awc::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_error_body(response).await;
    refusal_of(connection, status, retry_after, &body, fatal)
}

/// [`refusal`] once the status, `Retry-After` and body are known.
pub fn refusal_of(
    connection: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    fatal: &[u16],
) -> StreamError {
    if fatal.contains(&status) {
        return StreamError::Fatal { reason: format!("HTTP {status}: {body}") };
    }
    tracing::warn!(connection, status, body = %body, "connection refused");
    StreamError::Retryable(match status {
        420 | 429 => DisconnectCause::RateLimited { status, retry_after },
        _ => DisconnectCause::Http { status, retry_after },
    })
}

/// The first 2 KiB of an error body, waiting at most 2 s, as a log snippet.
async fn read_error_body<S>(response: &mut awc::ClientResponse<S>) -> String
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut body = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = response.next().await {
            body.extend_from_slice(&chunk);
            if body.len() >= 2048 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    snippet(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FATAL: [u16; 3] = [400, 401, 404];

    #[test]
    fn refusals_follow_the_reconnect_rules() {
        for status in FATAL {
            assert!(matches!(refusal_of("c", status, None, "", &FATAL), StreamError::Fatal { .. }), "{status}");
        }
        assert!(matches!(
            refusal_of("c", 503, None, "", &FATAL),
            StreamError::Retryable(DisconnectCause::Http { status: 503, .. })
        ));
        assert!(matches!(
            refusal_of("c", 429, None, "", &FATAL),
            StreamError::Retryable(DisconnectCause::RateLimited { status: 429, .. })
        ));
        assert!(matches!(
            refusal_of("c", 420, Some(Duration::from_secs(3)), "", &FATAL),
            StreamError::Retryable(DisconnectCause::RateLimited { status: 420, retry_after: Some(_) })
        ));
    }
}
