//! Site-stream control streams (protocols.md A.7): `add_user` and
//! `remove_user` on a live connection's `control_uri`, 100 ids a call, each
//! call signed with OAuth like any other request.

use std::time::Duration;

use super::request::{sign, Method, OAuthCredentials, StreamRequest};

/// Ids one `add_user` / `remove_user` call may carry.
pub const MAX_IDS_PER_CALL: usize = 100;

/// A control-stream operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    /// `POST {control_uri}/add_user.json`.
    AddUser,
    /// `POST {control_uri}/remove_user.json`.
    RemoveUser,
}

impl ControlOp {
    fn path(self) -> &'static str {
        match self {
            ControlOp::AddUser => "add_user.json",
            ControlOp::RemoveUser => "remove_user.json",
        }
    }
}

/// The unsigned requests for `op` on `ids`, 100 ids each.
pub fn control_requests(base_url: &str, control_uri: &str, op: ControlOp, ids: &[u64]) -> Vec<StreamRequest> {
    let url = format!("{}{}/{}", base_url.trim_end_matches('/'), control_uri.trim_end_matches('/'), op.path());
    ids.chunks(MAX_IDS_PER_CALL)
        .map(|chunk| StreamRequest {
            method: Method::Post,
            url: url.clone(),
            params: vec![("user_id".to_owned(), chunk.iter().map(u64::to_string).collect::<Vec<_>>().join(","))],
        })
        .collect()
}

/// Performs `op` for `ids` on one connection's control stream. Stops at the
/// first failure; the error names the status and the body.
pub async fn call(
    base_url: &str,
    control_uri: &str,
    op: ControlOp,
    ids: &[u64],
    credentials: &OAuthCredentials,
    timeout: Duration,
) -> Result<(), String> {
    let client = awc::Client::builder().timeout(timeout).finish();
    for req in control_requests(base_url, control_uri, op, ids) {
        let signed = sign(&req, credentials);
        let body = signed.body.unwrap_or_default();
        let mut res = client
            .post(&signed.url)
            .insert_header((awc::http::header::AUTHORIZATION, signed.authorization.as_str()))
            .content_type("application/x-www-form-urlencoded")
            .send_body(body)
            .await
            .map_err(|e| format!("{} {}: {e}", op.path(), signed.url))?;
        if !res.status().is_success() {
            let text =
                res.body().limit(2048).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return Err(format!("{} answered HTTP {}: {text}", op.path(), res.status().as_u16()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_100_per_call() {
        let ids: Vec<u64> = (1..=250).collect();
        let reqs = control_requests("http://h/", "/1.1/site/c/1_1_ab", ControlOp::AddUser, &ids);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].url, "http://h/1.1/site/c/1_1_ab/add_user.json");
        assert_eq!(reqs[2].params[0].1, (201..=250).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        let reqs = control_requests("http://h", "/1.1/site/c/x", ControlOp::RemoveUser, &[5]);
        assert_eq!(reqs[0].url, "http://h/1.1/site/c/x/remove_user.json");
    }
}
