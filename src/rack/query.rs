//! A small client for the AWS Query protocol, for the few EC2 and IAM reads exec readiness
//! makes (`DescribeRouteTables`, `DescribeVpcEndpoints`, `SimulatePrincipalPolicy`, the role
//! policy reads). The SDK crates for EC2 and IAM are among the largest there are (`aws-sdk-ec2`
//! alone takes minutes to compile) for a handful of read calls; this uses what the other
//! clients already bring: the same credentials chain, region and endpoint (`AWS_ENDPOINT_URL`),
//! SigV4 from `aws-sigv4`, rustls with the same crypto provider and the system's roots.
//!
//! Form-encoded POST, signed in the `Authorization` header; the XML answer is returned as text.
//! Throttling and server errors are retried a few times with backoff; every attempt is counted
//! in `rack_reconciler_aws_api_calls_total` like every other AWS call. Nothing of a request or
//! response is logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use backon::{ExponentialBuilder, Retryable};

use super::{ApiErrorKind, RackError};
use crate::config::Timeouts;
use crate::metrics::Metrics;

/// A Query-protocol API: signing name, version, endpoint.
pub struct Api {
    pub service: &'static str,
    version: &'static str,
    /// The service is global (IAM): one endpoint, signed for `us-east-1`.
    global: bool,
}

pub const EC2: Api = Api {
    service: "ec2",
    version: "2016-11-15",
    global: false,
};

pub const IAM: Api = Api {
    service: "iam",
    version: "2010-05-08",
    global: true,
};

#[derive(Clone)]
pub struct QueryClient {
    http: reqwest::Client,
    credentials: Option<SharedCredentialsProvider>,
    region: String,
    endpoint: Option<String>,
    metrics: Metrics,
}

impl QueryClient {
    /// A client with the credentials, region and endpoint of `sdk`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        timeouts: &Timeouts,
        metrics: Metrics,
    ) -> Result<QueryClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // A certificate the store cannot take is skipped, as the SDK's client does.
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(timeouts.aws_connect)
            .timeout(timeouts.aws_attempt)
            .build()
            .map_err(|e| format!("HTTP client set-up failed: {e}"))?;
        Ok(QueryClient {
            http,
            credentials: sdk.credentials_provider(),
            region: sdk
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "us-east-1".into()),
            endpoint: sdk.endpoint_url().map(str::to_string),
            metrics,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Calls `action` with `params` (besides `Action` and `Version`), retrying throttling and
    /// server errors; the answer's XML.
    pub async fn call(
        &self,
        api: &Api,
        action: &'static str,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<String, RackError> {
        let attempt = || async {
            let result = self.attempt(api, action, resource, params).await;
            let outcome = match &result {
                Ok(_) => "success",
                Err(e) => e.outcome(),
            };
            self.metrics.api_call(api.service, action, outcome);
            result
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(3)
                    .with_jitter(),
            )
            .sleep(tokio::time::sleep)
            .when(RackError::is_transient)
            .await
    }

    fn url(&self, api: &Api) -> String {
        match (&self.endpoint, api.global) {
            (Some(e), _) => format!("{}/", e.trim_end_matches('/')),
            (None, true) => format!("https://{}.amazonaws.com/", api.service),
            (None, false) => format!("https://{}.{}.amazonaws.com/", api.service, self.region),
        }
    }

    async fn attempt(
        &self,
        api: &Api,
        action: &'static str,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<String, RackError> {
        let fail = |kind, message: String| RackError::Api {
            service: api.service,
            operation: action,
            resource: resource.to_string(),
            kind,
            message,
        };
        let body = form_body(action, api.version, params);
        let url = self.url(api);
        let signing_region = if api.global {
            "us-east-1"
        } else {
            &self.region
        };
        let headers = self
            .signed_headers(api.service, signing_region, &url, &body)
            .await
            .map_err(|m| fail(ApiErrorKind::AccessDenied, m))?;
        let mut request = self.http.post(&url).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.map_err(|e| {
            let message = if e.is_timeout() {
                "timed out".to_string()
            } else {
                format!("could not reach the endpoint: {}", chain(&e))
            };
            fail(ApiErrorKind::Transient, message)
        })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| fail(ApiErrorKind::Transient, format!("reading the answer: {e}")))?;
        if status < 300 {
            return Ok(text);
        }
        let (code, message) = error_of(&text);
        let kind = super::aws::classify(&code, &message, status);
        let text = match (code.is_empty(), message.is_empty()) {
            (true, true) => format!("HTTP {status}"),
            (false, true) => code,
            (true, false) => message,
            (false, false) => format!("{code}: {message}"),
        };
        Err(fail(kind, text))
    }

    /// The `Content-Type`, `Host`, date and SigV4 headers of a request with this body.
    async fn signed_headers(
        &self,
        service: &str,
        region: &str,
        url: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let provider = self.credentials.as_ref().ok_or(
            "no AWS credentials: set them as for any AWS tool (environment, profile, role)",
        )?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| format!("loading AWS credentials failed: {e}"))?;
        let identity: Identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing failed: {e}"))?
            .into();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let signable = SignableRequest::new(
            "POST",
            url,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| format!("signing failed: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing failed: {e}"))?
            .into_parts();
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(headers)
    }
}

fn form_body(action: &str, version: &str, params: &[(String, String)]) -> String {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("Action", action)
        .append_pair("Version", version);
    for (k, v) in params {
        body.append_pair(k, v);
    }
    body.finish()
}

/// The `Code` and `Message` of an EC2 (`Response/Errors/Error`) or IAM (`ErrorResponse/Error`)
/// error answer.
fn error_of(xml: &str) -> (String, String) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return (String::new(), String::new());
    };
    let text = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    (text("Code"), text("Message"))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The text of every element named `name` under `node`, in document order.
pub fn texts(node: roxmltree::Node, name: &str) -> Vec<String> {
    node.descendants()
        .filter(|n| n.has_tag_name(name))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect()
}

/// The text of the first child element named `name`.
pub fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

/// Parses an answer, as a rack error when it is not XML.
pub fn parse<'a>(
    xml: &'a str,
    service: &'static str,
    operation: &'static str,
) -> Result<roxmltree::Document<'a>, RackError> {
    roxmltree::Document::parse(xml).map_err(|e| RackError::Api {
        service,
        operation,
        resource: String::new(),
        kind: ApiErrorKind::Transient,
        message: format!("malformed response: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_of_both_services() {
        let ec2 = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized</Message></Error></Errors><RequestID>1</RequestID></Response>";
        assert_eq!(
            error_of(ec2),
            (
                "UnauthorizedOperation".into(),
                "You are not authorized".into()
            )
        );
        let iam = "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(error_of(iam), ("AccessDenied".into(), "no".into()));
        assert_eq!(error_of("not xml"), (String::new(), String::new()));
    }
}
