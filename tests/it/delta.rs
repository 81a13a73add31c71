//! Delta stores and the delta format: the store contract both backends keep (create only if
//! absent, replace only if unchanged, caps that hold without a Content-Length), and the
//! round trip of deltas through a TUF repository on both stores.

use deltacache::delta::chain::{
    ChainPosition, DeltaMeta, delta_target_name, delta_targets, plan, verify_delta,
};
use deltacache::delta::format::{DeltaBatch, DeltaHeader, DeltaRecord};
use deltacache::delta_store::{Condition, DeltaStore, FileStore, PutError};
use deltacache::tuf::repo::{NewTarget, RepoState, publish};

use super::s3::S3Server;
use super::support::Trust;

fn put(id: &str, text: &str) -> DeltaRecord {
    let item = serde_json::json!({"id": id, "text": text}).to_string();
    DeltaRecord::Put {
        item: serde_json::value::RawValue::from_string(item).unwrap(),
    }
}

fn batch(seq: u64, parent: (&str, u64), records: Vec<DeltaRecord>) -> DeltaBatch {
    DeltaBatch {
        header: DeltaHeader {
            dataset: "catalogue".into(),
            seq,
            parent_seq: seq - 1,
            parent_digest: parent.0.into(),
            parent_len: parent.1,
            created_at: 1_795_000_000,
            model_fingerprint: "model".into(),
            schema_version: 2,
            n_records: records.len() as u64,
            records_len: 0,
        },
        records,
    }
}

/// The contract every delta store keeps.
async fn check_store_contract(store: DeltaStore) {
    let name = "metadata/timestamp.json";
    assert!(
        store.get(name, 1 << 16).await.unwrap().is_none(),
        "{}: a new store has nothing",
        store.describe()
    );
    store.replace(name, b"a", Condition::Absent).await.unwrap();
    assert!(matches!(
        store.replace(name, b"x", Condition::Absent).await,
        Err(PutError::Conflict { .. })
    ));
    let fetched = store.get(name, 1 << 16).await.unwrap().unwrap();
    assert_eq!(fetched.bytes, b"a");
    assert!(matches!(
        store
            .replace(name, b"x", Condition::Matches("\"nope\"".into()))
            .await,
        Err(PutError::Conflict { .. })
    ));
    store
        .replace(name, b"b", Condition::Matches(fetched.etag.clone()))
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .replace(name, b"c", Condition::Matches(fetched.etag))
                .await,
            Err(PutError::Conflict { .. })
        ),
        "a stale tag must lose"
    );
    assert_eq!(store.get(name, 1 << 16).await.unwrap().unwrap().bytes, b"b");

    let object = "targets/abc.000000000001.delta";
    store.create(object, b"delta bytes").await.unwrap();
    assert!(
        matches!(
            store.create(object, b"other").await,
            Err(PutError::Conflict { .. })
        ),
        "objects are created once, never overwritten"
    );
    let error = store.get(object, 5).await.unwrap_err();
    assert!(
        error.is_permanent() && error.to_string().contains("cap"),
        "{error}"
    );
    assert_eq!(
        store.list("targets/").await.unwrap(),
        vec![object.to_owned()]
    );
    store.remove(object).await.unwrap();
    assert!(store.get(object, 1 << 20).await.unwrap().is_none());
}

#[tokio::test]
async fn file_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    check_store_contract(DeltaStore::File(
        FileStore::open(dir.path(), std::time::Duration::from_secs(10)).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn s3_store_keeps_the_contract() {
    let server = S3Server::start();
    check_store_contract(server.store("contract").await).await;
}

fn record_strategy() -> impl proptest::strategy::Strategy<Value = DeltaRecord> {
    use proptest::prelude::*;
    prop_oneof![
        ("[a-z0-9-]{1,12}", "\\PC{0,40}").prop_map(|(id, text)| put(&id, &text)),
        "[a-z0-9-]{1,12}".prop_map(|id| DeltaRecord::Delete { id }),
    ]
}

/// encode → publish as a TUF target → read with the TUF client → check against its metadata
/// → decode gives back the records, on both stores, delta after delta.
#[test]
fn round_trip_through_both_stores_is_lossless() {
    use proptest::prelude::*;
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let trust = Trust::new(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let file_url = format!("file://{}", dir.path().join("store").display());
    let stores = runtime.block_on(async {
        let mut stores = Vec::new();
        for (url, remote) in [
            (file_url, Default::default()),
            (
                format!("s3://{}/roundtrip", super::s3::BUCKET),
                server.settings(),
            ),
        ] {
            trust.init_store(&url, &remote).await;
            stores.push(std::sync::Arc::new(
                DeltaStore::open(&url, &remote).await.unwrap(),
            ));
        }
        stores
    });
    let (key, _) = deltacache::tuf::keys::FileKey::load(&trust.key).unwrap();
    let keys = vec![key];
    let root = std::fs::read(&trust.root).unwrap();
    let parents = std::sync::Mutex::new(vec![("base".to_owned(), 0u64); stores.len()]);
    let next_seq = std::sync::atomic::AtomicU64::new(1);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 24,
        ..Default::default()
    });
    runner
        .run(
            &proptest::collection::vec(record_strategy(), 0..20),
            |records| {
                let seq = next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (store_idx, store) in stores.iter().enumerate() {
                    let parent = parents.lock().unwrap()[store_idx].clone();
                    let original = batch(seq, (&parent.0, parent.1), records.clone());
                    let bytes = original.encode().unwrap();
                    let target = NewTarget {
                        name: delta_target_name(seq),
                        bytes: bytes.clone(),
                        custom: DeltaMeta::of_batch(&original).to_custom(),
                    };
                    let decoded = runtime.block_on(async {
                        let state = RepoState::read(store, None).await.unwrap();
                        publish(store, &state, &keys, vec![target], Default::default())
                            .await
                            .unwrap();
                        let datastore = tempfile::tempdir().unwrap();
                        let repo = deltacache::tuf::client::load(
                            store.clone(),
                            &root,
                            datastore.path(),
                            Default::default(),
                        )
                        .await
                        .unwrap();
                        let deltas = delta_targets(&repo.targets()).unwrap();
                        let position = ChainPosition::new("catalogue", 0, "base", 0, "model");
                        let planned = plan(&deltas, &position).unwrap();
                        assert_eq!(planned.len() as u64, seq);
                        let newest = planned.last().unwrap();
                        let fetched = repo.read_target(&newest.name).await.unwrap();
                        assert_eq!(fetched, bytes);
                        verify_delta(&fetched, newest, 1 << 30).unwrap()
                    });
                    prop_assert_eq!(&decoded.batch.records, &records);
                    prop_assert_eq!(decoded.seq, seq);
                    prop_assert_eq!(decoded.batch.header.n_records, records.len() as u64);
                    parents.lock().unwrap()[store_idx] = (decoded.digest, decoded.len);
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A server that answers every GET with an endless body and no Content-Length: the read must
/// stop at the cap instead of filling memory.
#[tokio::test]
async fn endless_download_stops_at_the_cap() {
    use axum::body::Body;
    let app = axum::Router::new().fallback(|| async {
        let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util_stream(chunk);
        axum::response::Response::builder()
            .status(200)
            .body(Body::from_stream(stream))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = deltacache::delta_store::RemoteSettings {
        endpoint_url: Some(endpoint),
        static_credentials: Some(("k".into(), "s".into())),
        max_attempts: 1,
        ..Default::default()
    };
    let store = DeltaStore::open("s3://bucket/prefix", &settings)
        .await
        .unwrap();
    let error = store
        .get("metadata/timestamp.json", 64 * 1024 * 4)
        .await
        .unwrap_err();
    assert!(
        error.is_permanent() && error.to_string().contains("cap"),
        "{error}"
    );
    server.abort();
}

/// An endless stream of the same chunk.
fn futures_util_stream(
    chunk: axum::body::Bytes,
) -> impl futures_core::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    struct Endless(axum::body::Bytes);
    impl futures_core::Stream for Endless {
        type Item = Result<axum::body::Bytes, std::io::Error>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(Some(Ok(self.0.clone())))
        }
    }
    Endless(chunk)
}
