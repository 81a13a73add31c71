//! A real S3-compatible server on loopback, in process: `s3s` + `s3s-fs` (SigV4 checked,
//! objects stored as files).
//!
//! s3s-fs checks `If-None-Match` / `If-Match` and then writes, without holding anything in
//! between, so two conditional puts racing can both pass its check; and a read racing a
//! replacement can pair the old bytes with the new checksum. S3 itself decides conditional
//! writes atomically and reads whole objects. [`AtomicConditionalPuts`] serialises writes and
//! keeps reads from interleaving with them, so the server under test behaves like S3 for the
//! publish race; everything else goes straight to s3s-fs.

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

/// Access key the test server accepts.
pub const ACCESS_KEY: &str = "deltacache-test";
/// Secret key the test server accepts.
pub const SECRET_KEY: &str = "deltacache-test-secret";
/// The bucket every test uses.
pub const BUCKET: &str = "deltas";

struct AtomicConditionalPuts {
    inner: s3s_fs::FileSystem,
    /// Writers (puts, deletes) exclusive; a read holds it shared while s3s-fs opens the
    /// object and its checksum record, so a read never pairs one version's bytes with the
    /// next version's checksum (S3 reads are atomic; s3s-fs's are not).
    puts: tokio::sync::RwLock<()>,
    /// GETs wait while this is false: a store that is slow to answer, released by the test.
    reads_open: Arc<tokio::sync::watch::Sender<bool>>,
    /// GETs received (held or not), for tests of retries.
    gets: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl S3 for AtomicConditionalPuts {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let _serialised = self.puts.write().await;
        self.inner.put_object(req).await
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.reads_open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        let _consistent = self.puts.read().await;
        self.inner.get_object(req).await
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let _serialised = self.puts.write().await;
        self.inner.delete_object(req).await
    }
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }
}

/// A running server; stops when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Where objects live (as files); removed when the server is dropped.
    _root: tempfile::TempDir,
    /// Opens and closes reads (see [`S3Server::hold_reads`]).
    reads_open: Arc<tokio::sync::watch::Sender<bool>>,
    /// GETs received.
    gets: Arc<std::sync::atomic::AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Starts a server on 127.0.0.1:0 with one bucket, [`BUCKET`], on its own runtime so it
    /// serves whatever the test does with its own.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let reads_open = Arc::new(tokio::sync::watch::Sender::new(true));
        let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut builder = s3s::service::S3ServiceBuilder::new(AtomicConditionalPuts {
            inner: fs,
            puts: Default::default(),
            reads_open: reads_open.clone(),
            gets: gets.clone(),
        });
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = Arc::new(builder.build());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let connection = http
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(socket),
                        service.as_ref().clone(),
                    )
                    .into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        S3Server {
            endpoint,
            _root: root,
            reads_open,
            gets,
            runtime: Some(runtime),
        }
    }

    /// Makes every GET wait until [`S3Server::release_reads`].
    pub fn hold_reads(&self) {
        self.reads_open.send_replace(false);
    }

    /// Lets held and future GETs through.
    pub fn release_reads(&self) {
        self.reads_open.send_replace(true);
    }

    /// How many GETs the server has received.
    pub fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Environment for a child process (or this one) to reach the server with the SDK.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Remote settings pointing at this server.
    pub fn settings(&self) -> deltacache::delta_store::RemoteSettings {
        deltacache::delta_store::RemoteSettings {
            endpoint_url: Some(self.endpoint.clone()),
            max_attempts: 2,
            static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            operation_timeout: std::time::Duration::from_secs(20),
            ..Default::default()
        }
    }

    /// Opens a delta store under `prefix` of the test bucket.
    pub async fn store(&self, prefix: &str) -> deltacache::delta_store::DeltaStore {
        deltacache::delta_store::DeltaStore::open(
            &format!("s3://{BUCKET}/{prefix}"),
            &self.settings(),
        )
        .await
        .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
