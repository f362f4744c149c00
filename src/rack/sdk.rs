//! AWS SDK errors as rack errors: what failed, on which resource, and of which kind (the
//! kind decides the hint, whether it is retried, and the metric's outcome). Shared by the
//! adapters that call AWS (the rack, the params and status store, the lease).

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};

use super::{ApiErrorKind, RackError, THROTTLING_CODES};

/// Maps an SDK error to a rack error: what failed, on which resource, and the kind, which
/// decides the hint and the metric outcome. The message is AWS's, never request data.
pub(crate) fn map_error<E>(
    service: &'static str,
    operation: &'static str,
    resource: &str,
    e: &SdkError<E, HttpResponse>,
) -> RackError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, message) = match e {
        SdkError::TimeoutError(_) => (ApiErrorKind::Transient, "timed out".to_string()),
        SdkError::DispatchFailure(_) => (
            ApiErrorKind::Transient,
            format!("could not reach the endpoint: {}", error_chain(e)),
        ),
        SdkError::ResponseError(_) => (ApiErrorKind::Transient, "malformed response".to_string()),
        SdkError::ConstructionFailure(_) => (
            ApiErrorKind::Rejected,
            format!("could not build the request: {}", error_chain(e)),
        ),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().unwrap_or("");
            let msg = e.message().unwrap_or("");
            let kind = classify(code, msg, status);
            let text = match (code.is_empty(), msg.is_empty()) {
                (false, false) => format!("{code}: {msg}"),
                (false, true) => code.to_string(),
                (true, false) => msg.to_string(),
                (true, true) => format!("HTTP {status}"),
            };
            (kind, text)
        }
        _ => (ApiErrorKind::Transient, error_chain(e)),
    };
    RackError::Api {
        service,
        operation,
        resource: resource.to_string(),
        kind,
        message,
    }
}

pub(crate) fn classify(code: &str, message: &str, status: u16) -> ApiErrorKind {
    const TRANSIENT: &[&str] = &[
        "ServerException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
    ];
    const DENIED: &[&str] = &[
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    ];
    const NOT_FOUND: &[&str] = &[
        "ServiceNotFoundException",
        "ClusterNotFoundException",
        "ResourceNotFoundException",
        "NoSuchEntity",
    ];
    if THROTTLING_CODES.contains(&code) || TRANSIENT.contains(&code) || status >= 500 {
        ApiErrorKind::Transient
    } else if DENIED.contains(&code) || status == 403 {
        ApiErrorKind::AccessDenied
    } else if NOT_FOUND.contains(&code)
        || message.contains("does not exist")
        || message.contains("Unable to describe task definition")
    {
        ApiErrorKind::NotFound
    } else {
        ApiErrorKind::Rejected
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        assert_eq!(
            classify("ThrottlingException", "Rate exceeded", 400),
            ApiErrorKind::Transient
        );
        assert_eq!(classify("", "", 503), ApiErrorKind::Transient);
        assert_eq!(
            classify("AccessDeniedException", "not authorized", 400),
            ApiErrorKind::AccessDenied
        );
        assert_eq!(
            classify("ValidationError", "Stack with id x does not exist", 400),
            ApiErrorKind::NotFound
        );
        assert_eq!(
            classify("ClientException", "Invalid revision", 400),
            ApiErrorKind::Rejected
        );
    }
}
