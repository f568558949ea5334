//! `ApiError`: every way a control-API request can fail, each mapped to one
//! HTTP status and a JSON body `{"error":"..."}`, so clients never have to
//! parse HTML or empty bodies (actix/examples `json-error`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use streamherd_actors::messages::PlanError;

use crate::config::one_line;

/// The one-line message of a 401, also what the tests compare against.
pub const UNAUTHORIZED_MESSAGE: &str = "missing or invalid bearer token";

/// A failed control-API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The token is set and the request did not carry it.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No route matches the path.
    #[error("no route for {} {}", one_line(method), one_line(path))]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path (without the query string).
        path: String,
    },
    /// The path exists but not with this method.
    #[error("method {} is not allowed on {}", one_line(method), one_line(path))]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// `/sources/{name}/...` names no configured source.
    #[error("no source named `{}`", one_line(.0))]
    UnknownSource(String),
    /// The body is not what the route takes (one line whatever it quotes).
    #[error("{}", one_line(.0))]
    BadRequest(String),
    /// The body is over the limit.
    #[error("request body over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The planner refused the change.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `POST /update` could not re-read the predicates.
    #[error("reload failed: {}", one_line(.0))]
    ReloadFailed(String),
    /// The supervisor or planner did not answer: stopping, or too busy.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else on our side.
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NoRoute { .. } | ApiError::UnknownSource(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // A well-formed request that the source's current limits refuse
            // (too many follows for its credentials, no predicate left): the
            // same body can succeed after other changes, so it is a conflict
            // with the resource's state rather than a malformed request.
            ApiError::Plan(PlanError::TooMany { .. } | PlanError::NoPredicate | PlanError::NotOwned(_)) => {
                StatusCode::CONFLICT
            }
            // Following ids on a sample stream, consolidating a filter source:
            // no state makes this request right.
            ApiError::Plan(PlanError::NotApplicable(_) | PlanError::BadValue(_)) => StatusCode::BAD_REQUEST,
            ApiError::Plan(PlanError::Persist(_) | PlanError::Coordination(_))
            | ApiError::ReloadFailed(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized = self {
            // RFC 6750 section 3: a 401 names the scheme it wants.
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"streamherd\"")));
        }
        // One line whatever the request quoted (an id or a key with a newline).
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        match e {
            actix::MailboxError::Closed => ApiError::Unavailable("the service is stopping".into()),
            actix::MailboxError::Timeout => ApiError::Unavailable("the service did not answer in time".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(e: &ApiError) -> serde_json::Value {
        let bytes = e.error_response().into_body().try_into_bytes().unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_error_is_a_json_object_with_one_message() {
        let cases = [
            (ApiError::Unauthorized, 401),
            (ApiError::NoRoute { method: "GET".into(), path: "/x".into() }, 404),
            (ApiError::UnknownSource("x".into()), 404),
            (ApiError::BadRequest("bad".into()), 400),
            (ApiError::PayloadTooLarge { limit: 4 }, 413),
            (ApiError::Plan(PlanError::NoPredicate), 409),
            (ApiError::Plan(PlanError::NotApplicable("no".into())), 400),
            (ApiError::ReloadFailed("gone".into()), 500),
            (ApiError::Unavailable("stopping".into()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e}");
            let v = body(&e);
            assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
            assert_eq!(v["error"], e.to_string());
        }
        assert_eq!(body(&ApiError::UnknownSource("x".into()))["error"], "no source named `x`");
    }

    #[test]
    fn unauthorized_names_the_bearer_scheme() {
        let r = ApiError::Unauthorized.error_response();
        let h = r.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(h.starts_with("Bearer"), "{h}");
        assert_eq!(ApiError::Unauthorized.to_string(), UNAUTHORIZED_MESSAGE);
    }
}
