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
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use backon::{ExponentialBuilder, Retryable};

use super::{ApiErrorKind, RackError};
use crate::metrics::Metrics;
use crate::settings::Timeouts;

/// A Query-protocol API: signing name, version, endpoint.
pub struct Api {
    pub service: &'static str,
    version: &'static str,
    /// The service is global (IAM): one endpoint per partition, signed for its first region.
    global: bool,
    /// The variable that overrides its endpoint, as for the SDK's clients.
    endpoint_env: &'static str,
}

pub const EC2: Api = Api {
    service: "ec2",
    version: "2016-11-15",
    global: false,
    endpoint_env: "AWS_ENDPOINT_URL_EC2",
};

pub const IAM: Api = Api {
    service: "iam",
    version: "2010-05-08",
    global: true,
    endpoint_env: "AWS_ENDPOINT_URL_IAM",
};

/// Credentials are used until this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

type Http = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

#[derive(Clone)]
pub struct QueryClient {
    http: Http,
    /// One attempt (connecting, sending, reading the answer) takes at most this long.
    attempt_timeout: Duration,
    credentials: Option<SharedCredentialsProvider>,
    /// The credentials last loaded, kept until shortly before they expire (the provider of
    /// an `SdkConfig` does not cache: each load may be an STS or metadata call).
    cached: Arc<std::sync::Mutex<Option<Credentials>>>,
    region: String,
    /// `AWS_ENDPOINT_URL` (every service), and the per-service overrides.
    endpoint: Option<String>,
    overrides: Vec<(&'static str, String)>,
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
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(timeouts.aws_connect));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(QueryClient {
            http,
            attempt_timeout: timeouts.aws_attempt,
            credentials: sdk.credentials_provider(),
            cached: Arc::default(),
            overrides: [&EC2, &IAM]
                .iter()
                .filter_map(|api| Some((api.service, std::env::var(api.endpoint_env).ok()?)))
                .collect(),
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

    /// The endpoint and the region to sign for: the service's regional endpoint, IAM's one
    /// per partition, or the override.
    fn endpoint(&self, api: &Api) -> (String, String) {
        let (host, signing) = host_of(api, &self.region);
        let overridden = self
            .overrides
            .iter()
            .find(|(s, _)| *s == api.service)
            .map(|(_, e)| e)
            .or(self.endpoint.as_ref());
        let url = match overridden {
            Some(e) => format!("{}/", e.trim_end_matches('/')),
            None => format!("https://{host}/"),
        };
        (url, signing)
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
        let (url, signing_region) = self.endpoint(api);
        let headers = self
            .signed_headers(api.service, &signing_region, &url, &body)
            .await
            .map_err(|m| fail(ApiErrorKind::Transient, m))?;
        let mut request = http::Request::post(&url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| {
                fail(
                    ApiErrorKind::Rejected,
                    format!("could not build the request: {e}"),
                )
            })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                fail(
                    ApiErrorKind::Transient,
                    format!(
                        "could not reach the endpoint: {}",
                        super::sdk::error_chain(&e)
                    ),
                )
            })?;
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|e| fail(ApiErrorKind::Transient, format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, text) = tokio::time::timeout(self.attempt_timeout, exchange)
            .await
            .map_err(|_| fail(ApiErrorKind::Transient, "timed out".into()))??;
        if status < 300 {
            return Ok(text);
        }
        let (code, message) = error_of(&text);
        let kind = super::sdk::classify(&code, &message, status);
        let text = match (code.is_empty(), message.is_empty()) {
            (true, true) => format!("HTTP {status}"),
            (false, true) => code,
            (true, false) => message,
            (false, false) => format!("{code}: {message}"),
        };
        Err(fail(kind, text))
    }

    /// The cached credentials while they are good, else newly loaded ones.
    async fn credentials(&self) -> Result<Credentials, String> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|e| e > SystemTime::now() + CREDENTIALS_MARGIN)
        };
        if let Some(c) = self.lock_cache().clone().filter(fresh) {
            return Ok(c);
        }
        let provider = self.credentials.as_ref().ok_or(
            "no AWS credentials: set them as for any AWS tool (environment, profile, role)",
        )?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| format!("loading AWS credentials failed: {e}"))?;
        *self.lock_cache() = Some(creds.clone());
        Ok(creds)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<Credentials>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `Content-Type`, `Host`, date and SigV4 headers of a request with this body.
    async fn signed_headers(
        &self,
        service: &str,
        region: &str,
        url: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let identity: Identity = self.credentials().await?.into();
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

/// The host of a service in a region's partition, and the region to sign for.
fn host_of(api: &Api, region: &str) -> (String, String) {
    let china = region.starts_with("cn-");
    let dns = if china {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    if !api.global {
        return (
            format!("{}.{region}.{dns}", api.service),
            region.to_string(),
        );
    }
    if china {
        (
            format!("{}.cn-north-1.{dns}", api.service),
            "cn-north-1".into(),
        )
    } else if region.starts_with("us-gov-") {
        (
            format!("{}.us-gov.{dns}", api.service),
            "us-gov-west-1".into(),
        )
    } else {
        (format!("{}.{dns}", api.service), "us-east-1".into())
    }
}

/// Characters sent as they are; every other byte is percent-encoded, as the AWS SDKs encode
/// Query bodies (a space is `%20`, `*` is `%2A`).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn form_body(action: &str, version: &str, params: &[(String, String)]) -> String {
    let pairs = [("Action", action), ("Version", version)]
        .into_iter()
        .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    pairs
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, UNRESERVED),
                percent_encoding::utf8_percent_encode(v, UNRESERVED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
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
    fn bodies_are_encoded_as_the_sdks_encode_them() {
        let body = form_body(
            "PutRolePolicy",
            "2010-05-08",
            &[("PolicyDocument".into(), r#"{"Action": "ssm:*"}"#.into())],
        );
        assert_eq!(
            body,
            "Action=PutRolePolicy&Version=2010-05-08&PolicyDocument=%7B%22Action%22%3A%20%22ssm%3A%2A%22%7D"
        );
    }

    #[test]
    fn endpoints_per_partition() {
        let cases = [
            (
                &EC2,
                "eu-west-1",
                "ec2.eu-west-1.amazonaws.com",
                "eu-west-1",
            ),
            (&IAM, "eu-west-1", "iam.amazonaws.com", "us-east-1"),
            (
                &EC2,
                "cn-northwest-1",
                "ec2.cn-northwest-1.amazonaws.com.cn",
                "cn-northwest-1",
            ),
            (
                &IAM,
                "cn-northwest-1",
                "iam.cn-north-1.amazonaws.com.cn",
                "cn-north-1",
            ),
            (
                &IAM,
                "us-gov-east-1",
                "iam.us-gov.amazonaws.com",
                "us-gov-west-1",
            ),
        ];
        for (api, region, host, signing) in cases {
            assert_eq!(
                host_of(api, region),
                (host.to_string(), signing.to_string())
            );
        }
    }

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
