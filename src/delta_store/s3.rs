//! A delta store on S3 or an S3-compatible server, through `aws-sdk-s3`.
//!
//! Credentials and region come from the default provider chain (environment, profile,
//! instance profile via IMDSv2). An endpoint override (`AWS_ENDPOINT_URL`, or the setting)
//! points it at an S3-compatible server and turns on path-style addressing by default.
//! Objects are created with `If-None-Match: *` and replaced with `If-Match: <ETag>`.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use super::{Condition, FetchError, Fetched, PutError, RemoteSettings};

/// A bucket and prefix holding a delta chain.
#[derive(Debug, Clone)]
pub struct S3Store {
    /// The SDK client (pooled connections, retries, timeouts).
    client: Client,
    /// The bucket.
    bucket: String,
    /// Key prefix without a trailing slash ("" for the bucket's root).
    prefix: String,
    /// One attempt of a read, the body included.
    attempt_timeout: std::time::Duration,
    /// Attempts per read.
    max_attempts: u32,
}

impl S3Store {
    /// Builds the client from the default provider chain plus `settings`.
    pub async fn open(
        bucket: &str,
        prefix: &str,
        settings: &RemoteSettings,
    ) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some((access_key, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key,
                secret,
                None,
                None,
                "deltacache-settings",
            ));
        }
        let shared = loader
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        let endpoint = settings
            .endpoint_url
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_owned));
        if let Some(endpoint) = &endpoint {
            builder = builder
                .endpoint_url(endpoint)
                .force_path_style(settings.force_path_style.unwrap_or(true));
        } else if let Some(path_style) = settings.force_path_style {
            builder = builder.force_path_style(path_style);
        }
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            attempt_timeout: settings.attempt_timeout,
            max_attempts: settings.max_attempts.max(1),
        })
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The store's URL.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Reads an object whole, at most `cap` bytes. The SDK retries the request; a body that
    /// stops or trickles past [`RemoteSettings::attempt_timeout`] fails the attempt, and the
    /// read is tried again from the start, up to the configured attempts.
    pub(super) async fn get(&self, name: &str, cap: u64) -> Result<Option<Fetched>, FetchError> {
        self.read(name, cap, None).await
    }

    /// Reads `len` bytes of an object from `offset` (a `Range` request), retried as
    /// [`S3Store::get`] is.
    pub(super) async fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Fetched>, FetchError> {
        let range = format!("bytes={offset}-{}", offset + len.max(1) - 1);
        self.read(name, len, Some(range)).await
    }

    /// Reads an object or a range of it, at most `cap` bytes, with retries.
    async fn read(
        &self,
        name: &str,
        cap: u64,
        range: Option<String>,
    ) -> Result<Option<Fetched>, FetchError> {
        use backon::Retryable;
        let attempt = || async {
            let once = self.get_once(name, cap, range.as_deref());
            match tokio::time::timeout(self.attempt_timeout, once).await {
                Ok(result) => result,
                Err(_) => Err(Attempt::Retry(FetchError::Unavailable {
                    name: self.key(name),
                    message: format!(
                        "no complete answer within {}s (attempt timeout)",
                        self.attempt_timeout.as_secs_f64()
                    ),
                })),
            }
        };
        attempt
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(200))
                    .with_max_times(self.max_attempts as usize - 1)
                    .with_jitter(),
            )
            .when(|failed| matches!(failed, Attempt::Retry(_)))
            .await
            .map_err(Attempt::into_error)
    }

    /// One read: the SDK's request (retried by the SDK), then the body.
    async fn get_once(
        &self,
        name: &str,
        cap: u64,
        range: Option<&str>,
    ) -> Result<Option<Fetched>, Attempt> {
        let key = self.key(name);
        let unavailable = |message: String| FetchError::Unavailable {
            name: key.clone(),
            message,
        };
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_range(range.map(str::to_owned))
            .send()
            .await
        {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => {
                return Err(Attempt::Final(unavailable(
                    DisplayErrorContext(e).to_string(),
                )));
            }
        };
        if let Some(len) = output.content_length()
            && len as u64 > cap
        {
            return Err(Attempt::Final(FetchError::Oversize { name: key, cap }));
        }
        let etag = output.e_tag().unwrap_or_default().to_owned();
        let mut body = output.body;
        let mut bytes = Vec::new();
        // The cap holds even when the server sends no Content-Length (or lies about it).
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| Attempt::Retry(unavailable(DisplayErrorContext(e).to_string())))?
        {
            if (bytes.len() + chunk.len()) as u64 > cap {
                return Err(Attempt::Final(FetchError::Oversize { name: key, cap }));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(Fetched { bytes, etag }))
    }

    pub(super) async fn create(&self, name: &str, bytes: &[u8]) -> Result<(), PutError> {
        let key = self.key(name);
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await;
        map_put(result, key)
    }

    pub(super) async fn replace(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition,
    ) -> Result<(), PutError> {
        let key = self.key(name);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(bytes.to_vec()));
        let request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        map_put(request.send().await, key)
    }

    pub(super) async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let key_prefix = self.key(prefix);
        let strip = self.key("");
        let mut names = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&key_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| anyhow::anyhow!("list {key_prefix}: {}", DisplayErrorContext(e)))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    names.push(key.strip_prefix(&strip).unwrap_or(key).to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    pub(super) async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let key = self.key(name);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("delete {key}: {}", DisplayErrorContext(e)))?;
        Ok(())
    }
}

fn map_put<T, E>(
    result: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    key: String,
) -> Result<(), PutError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(error) => {
            let status = error.raw_response().map(|r| r.status().as_u16());
            if matches!(status, Some(412) | Some(409)) {
                Err(PutError::Conflict { name: key })
            } else {
                Err(PutError::Other(anyhow::anyhow!(
                    "put {key}: {}",
                    DisplayErrorContext(error)
                )))
            }
        }
    }
}

/// A failed read attempt: worth another attempt (the body stalled or broke), or not (the
/// SDK already retried the request, or the object is over its cap).
enum Attempt {
    /// Try again.
    Retry(FetchError),
    /// Give up.
    Final(FetchError),
}

impl Attempt {
    fn into_error(self) -> FetchError {
        match self {
            Attempt::Retry(error) | Attempt::Final(error) => error,
        }
    }
}
