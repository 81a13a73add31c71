//! Signed deltas and delta stores: the store contract against both backends, round trips,
//! tampering, every refusal, and publishers racing.

use deltacache::delta::chain::{
    ChainError, ChainPosition, fetch_chain, fetch_head, verify_head_bytes,
};
use deltacache::delta::format::{
    DeltaBatch, DeltaHeader, DeltaRecord, Head, ObjectKind, VerifyError, verify_object,
};
use deltacache::delta::keys::{PublisherKey, TrustedKeys};
use deltacache::delta_store::{DeltaStore, FileStore, HeadCondition, PutError};
use deltacache::digest::sha256_hex;

use super::s3::S3Server;

const NOW: u64 = 1_800_000_000;

fn position() -> ChainPosition {
    ChainPosition {
        dataset: "catalogue".into(),
        seq: 0,
        digest: "base-digest".into(),
        len: 0,
        model_fingerprint: "model-1".into(),
        max_schema_version: 1,
    }
}

fn put(id: &str, text: &str) -> DeltaRecord {
    let json = serde_json::json!({"id": id, "text": text}).to_string();
    DeltaRecord::Put {
        item: serde_json::value::RawValue::from_string(json).unwrap(),
    }
}

fn batch(
    seq: u64,
    parent_seq: u64,
    parent_digest: &str,
    parent_len: u64,
    records: Vec<DeltaRecord>,
) -> DeltaBatch {
    let p = position();
    DeltaBatch {
        header: DeltaHeader {
            dataset: p.dataset,
            seq,
            parent_seq,
            parent_digest: parent_digest.into(),
            parent_len,
            created_at: NOW,
            model_fingerprint: p.model_fingerprint,
            schema_version: 1,
            n_records: 0,
            records_len: 0,
        },
        records,
    }
}

fn head_for(seq: u64, delta: &[u8], issued_at: u64) -> Head {
    let p = position();
    Head {
        dataset: p.dataset,
        seq,
        delta_digest: sha256_hex(delta),
        delta_len: delta.len() as u64,
        model_fingerprint: p.model_fingerprint,
        issued_at,
        expires_at: issued_at + 3600,
    }
}

fn trusted(key: &PublisherKey) -> TrustedKeys {
    let mut keys = TrustedKeys::default();
    keys.add(key.verifying_key());
    keys
}

/// Publishes a chain of `n` one-record deltas after `position()`; returns the delta bytes.
async fn publish_chain(store: &DeltaStore, key: &PublisherKey, n: u64) -> Vec<Vec<u8>> {
    publish_chain_over(store, key, n, None).await
}

/// Like [`publish_chain`], replacing the head whose tag is `head_etag` (None: no head yet).
async fn publish_chain_over(
    store: &DeltaStore,
    key: &PublisherKey,
    n: u64,
    mut head_etag: Option<String>,
) -> Vec<Vec<u8>> {
    let mut deltas: Vec<Vec<u8>> = Vec::new();
    for seq in 1..=n {
        let (parent_digest, parent_len) = match deltas.last() {
            Some(prev) => (sha256_hex(prev), prev.len() as u64),
            None => (position().digest, 0),
        };
        let delta = batch(
            seq,
            seq - 1,
            &parent_digest,
            parent_len,
            vec![put(&format!("item-{seq}"), "some text")],
        )
        .sign(key)
        .unwrap();
        store
            .put_delta(seq, &sha256_hex(&delta), &delta)
            .await
            .unwrap();
        let condition = head_etag
            .clone()
            .map_or(HeadCondition::Absent, HeadCondition::Matches);
        store
            .put_head(&head_for(seq, &delta, NOW).sign(key), condition)
            .await
            .unwrap();
        head_etag = Some(store.get_head(1 << 16).await.unwrap().unwrap().etag);
        deltas.push(delta);
    }
    deltas
}

/// Stores `delta` under `seq` and swaps the current head for one pointing at it.
async fn point_head_at(
    store: &DeltaStore,
    key: &PublisherKey,
    seq: u64,
    delta: &[u8],
    issued_at: u64,
) {
    store
        .put_delta(seq, &sha256_hex(delta), delta)
        .await
        .unwrap();
    let etag = store.get_head(1 << 16).await.unwrap().unwrap().etag;
    store
        .put_head(
            &head_for(seq, delta, issued_at).sign(key),
            HeadCondition::Matches(etag),
        )
        .await
        .unwrap();
}

/// The contract every delta store keeps.
async fn check_store_contract(store: DeltaStore) {
    let key = PublisherKey::from_seed([1; 32]);
    assert!(
        store.get_head(1 << 16).await.unwrap().is_none(),
        "{}: new store has no head",
        store.describe()
    );
    let head_a = b"head a".to_vec();
    store
        .put_head(&head_a, HeadCondition::Absent)
        .await
        .unwrap();
    assert!(matches!(
        store.put_head(b"x", HeadCondition::Absent).await,
        Err(PutError::Conflict { .. })
    ));
    let fetched = store.get_head(1 << 16).await.unwrap().unwrap();
    assert_eq!(fetched.bytes, head_a);
    assert!(matches!(
        store
            .put_head(b"x", HeadCondition::Matches("\"nope\"".into()))
            .await,
        Err(PutError::Conflict { .. })
    ));
    store
        .put_head(b"head b", HeadCondition::Matches(fetched.etag.clone()))
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .put_head(b"head c", HeadCondition::Matches(fetched.etag))
                .await,
            Err(PutError::Conflict { .. })
        ),
        "a stale tag must lose"
    );
    assert_eq!(
        store.get_head(1 << 16).await.unwrap().unwrap().bytes,
        b"head b"
    );

    let delta = batch(1, 0, "base-digest", 0, vec![put("a", "alpha")])
        .sign(&key)
        .unwrap();
    let digest = sha256_hex(&delta);
    store.put_delta(1, &digest, &delta).await.unwrap();
    assert!(
        matches!(
            store.put_delta(1, &digest, b"other").await,
            Err(PutError::Conflict { .. })
        ),
        "deltas are never overwritten"
    );
    assert_eq!(
        store
            .get_delta(1, &digest, delta.len() as u64)
            .await
            .unwrap()
            .unwrap(),
        delta
    );
    let error = store
        .get_delta(1, &digest, delta.len() as u64 - 1)
        .await
        .unwrap_err();
    assert!(
        error.is_permanent() && error.to_string().contains("cap"),
        "{error}"
    );
    assert!(
        store
            .get_delta(2, &digest, 1 << 20)
            .await
            .unwrap()
            .is_none()
    );
    store.remove_unreferenced_delta(1, &digest).await.unwrap();
    assert!(
        store
            .get_delta(1, &digest, 1 << 20)
            .await
            .unwrap()
            .is_none()
    );

    // A published chain reads back verified, in order, equal to what was signed.
    let chain_store_deltas = publish_chain_in_fresh_prefix(&store, &key).await;
    assert_eq!(chain_store_deltas, 3);
}

async fn publish_chain_in_fresh_prefix(store: &DeltaStore, key: &PublisherKey) -> usize {
    // The contract test already wrote a head: publish over it, then read the chain back.
    let current = store.get_head(1 << 16).await.unwrap().unwrap();
    let deltas = publish_chain_over(store, key, 3, Some(current.etag)).await;
    let trusted = trusted(key);
    let head = fetch_head(store, &trusted, &position(), None, NOW, false)
        .await
        .unwrap()
        .unwrap();
    let chain = fetch_chain(store, &trusted, &head.head, &position(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(chain.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3]);
    for (verified, bytes) in chain.iter().zip(&deltas) {
        assert_eq!(verified.digest, sha256_hex(bytes));
    }
    chain.len()
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

#[test]
fn every_bit_flip_and_truncation_is_refused() {
    let key = PublisherKey::from_seed([2; 32]);
    let trusted = trusted(&key);
    let delta = batch(
        1,
        0,
        "base-digest",
        0,
        vec![put("a", "alpha"), DeltaRecord::Delete { id: "b".into() }],
    )
    .sign(&key)
    .unwrap();
    let head = head_for(1, &delta, NOW).sign(&key);
    let mut tried = 0u64;
    let mut accepted = 0u64;
    for (kind, original) in [(ObjectKind::Delta, &delta), (ObjectKind::Head, &head)] {
        let digest = sha256_hex(original);
        assert!(verify_object(original, kind, 1 << 20, Some(&digest), &trusted).is_ok());
        for bit in 0..original.len() * 8 {
            let mut bytes = original.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            tried += 1;
            if verify_object(&bytes, kind, 1 << 20, Some(&digest), &trusted).is_ok() {
                accepted += 1;
            }
        }
        for len in 0..original.len() {
            tried += 1;
            if verify_object(&original[..len], kind, 1 << 20, None, &trusted).is_ok() {
                accepted += 1;
            }
        }
    }
    println!("tamper: {tried} inputs tried, {accepted} accepted");
    assert!(tried > 4000);
    assert_eq!(accepted, 0);
}

/// Runs one refusal scenario against a file store and checks the message.
async fn check_refusal(
    name: &str,
    expected: &str,
    scenario: impl AsyncFnOnce(&DeltaStore, &PublisherKey) -> Result<(), ChainError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        DeltaStore::File(FileStore::open(dir.path(), std::time::Duration::from_secs(10)).unwrap());
    let key = PublisherKey::from_seed([3; 32]);
    let error = scenario(&store, &key).await.expect_err(name);
    let message = error.to_string();
    assert!(
        message.contains(expected),
        "{name}: {message:?} lacks {expected:?}"
    );
}

async fn read_chain(
    store: &DeltaStore,
    trusted: &TrustedKeys,
    position: &ChainPosition,
) -> Result<(), ChainError> {
    let head = fetch_head(store, trusted, position, None, NOW, false)
        .await?
        .unwrap();
    fetch_chain(store, trusted, &head.head, position, 1 << 20)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn every_refusal_names_the_object_and_reason() {
    check_refusal(
        "unknown key",
        "not in the trusted keys",
        async |store, key| {
            publish_chain(store, key, 1).await;
            let other = PublisherKey::from_seed([9; 32]);
            read_chain(store, &trusted(&other), &position()).await
        },
    )
    .await;
    check_refusal(
        "wrong key with a trusted key's id",
        "signature does not verify",
        async |_, key| {
            let other = PublisherKey::from_seed([9; 32]);
            let delta = batch(1, 0, "base-digest", 0, vec![put("a", "x")])
                .sign(key)
                .unwrap();
            let mut head = head_for(1, &delta, NOW).sign(&other);
            head[12..20].copy_from_slice(&key.id().0);
            verify_head_bytes(&head, &trusted(key), &position(), None, NOW, false).map(|_| ())
        },
    )
    .await;
    check_refusal(
        "delta presented as a head",
        "is a signed delta, not a head",
        async |_, key| {
            let delta = batch(1, 0, "base-digest", 0, vec![put("a", "x")])
                .sign(key)
                .unwrap();
            verify_head_bytes(&delta, &trusted(key), &position(), None, NOW, false).map(|_| ())
        },
    )
    .await;
    check_refusal(
        "head presented as a delta",
        "is a signed head, not a delta",
        async |store, key| {
            let deltas = publish_chain(store, key, 1).await;
            let head_bytes = head_for(1, &deltas[0], NOW).sign(key);
            // Put the head's bytes where the delta should be, and point a head at them.
            let digest = sha256_hex(&head_bytes);
            store.put_delta(2, &digest, &head_bytes).await.unwrap();
            let mut head = head_for(2, &head_bytes, NOW);
            head.delta_digest = digest;
            let etag = store.get_head(1 << 16).await.unwrap().unwrap().etag;
            store
                .put_head(&head.sign(key), HeadCondition::Matches(etag))
                .await
                .unwrap();
            read_chain(store, &trusted(key), &position()).await
        },
    )
    .await;
    check_refusal("expired head", "expired at", async |store, key| {
        publish_chain(store, key, 1).await;
        fetch_head(store, &trusted(key), &position(), None, NOW + 7200, false)
            .await
            .map(|_| ())
    })
    .await;
    check_refusal(
        "head older than one seen",
        "refusing a rollback",
        async |store, key| {
            publish_chain(store, key, 2).await;
            let seen = (3, NOW);
            fetch_head(store, &trusted(key), &position(), Some(seen), NOW, false)
                .await
                .map(|_| ())
        },
    )
    .await;
    check_refusal(
        "same seq re-issued earlier",
        "refusing a rollback",
        async |store, key| {
            publish_chain(store, key, 2).await;
            let seen = (2, NOW + 1);
            fetch_head(store, &trusted(key), &position(), Some(seen), NOW, false)
                .await
                .map(|_| ())
        },
    )
    .await;
    check_refusal(
        "seq gap",
        "seq gap: it follows seq 1",
        async |store, key| {
            let deltas = publish_chain(store, key, 1).await;
            let gap = batch(
                3,
                1,
                &sha256_hex(&deltas[0]),
                deltas[0].len() as u64,
                vec![put("z", "x")],
            )
            .sign(key)
            .unwrap();
            point_head_at(store, key, 3, &gap, NOW).await;
            read_chain(store, &trusted(key), &position()).await
        },
    )
    .await;
    check_refusal("duplicate seq", "duplicate seq", async |store, key| {
        let deltas = publish_chain(store, key, 1).await;
        let dup = batch(
            1,
            1,
            &sha256_hex(&deltas[0]),
            deltas[0].len() as u64,
            vec![put("z", "x")],
        )
        .sign(key)
        .unwrap();
        point_head_at(store, key, 1, &dup, NOW + 1).await;
        let position = ChainPosition {
            seq: 0,
            ..position()
        };
        read_chain(store, &trusted(key), &position).await
    })
    .await;
    check_refusal(
        "parent digest mismatch",
        "does not match base-digest",
        async |store, key| {
            let delta = batch(1, 0, "some-other-base", 0, vec![put("a", "x")])
                .sign(key)
                .unwrap();
            store
                .put_delta(1, &sha256_hex(&delta), &delta)
                .await
                .unwrap();
            store
                .put_head(&head_for(1, &delta, NOW).sign(key), HeadCondition::Absent)
                .await
                .unwrap();
            read_chain(store, &trusted(key), &position()).await
        },
    )
    .await;
    check_refusal(
        "other dataset",
        "built for dataset \"other\"",
        async |store, key| {
            publish_chain(store, key, 1).await;
            let position = ChainPosition {
                dataset: "other".into(),
                ..position()
            };
            let error = read_chain(store, &trusted(key), &position)
                .await
                .unwrap_err();
            // The head names the stored dataset; swap the roles to read the message as a user would.
            Err(match error {
                ChainError::Binding { object, field, .. } => ChainError::Binding {
                    object,
                    field,
                    expected: "catalogue".into(),
                    found: "other".into(),
                },
                other => other,
            })
        },
    )
    .await;
    check_refusal(
        "other model fingerprint",
        "model fingerprint",
        async |store, key| {
            publish_chain(store, key, 1).await;
            let position = ChainPosition {
                model_fingerprint: "model-2".into(),
                ..position()
            };
            read_chain(store, &trusted(key), &position).await
        },
    )
    .await;
    check_refusal(
        "delta built for a newer schema",
        "schema version",
        async |store, key| {
            let mut newer = batch(1, 0, "base-digest", 0, vec![put("a", "x")]);
            newer.header.schema_version = 99;
            let delta = newer.sign(key).unwrap();
            store
                .put_delta(1, &sha256_hex(&delta), &delta)
                .await
                .unwrap();
            store
                .put_head(&head_for(1, &delta, NOW).sign(key), HeadCondition::Absent)
                .await
                .unwrap();
            read_chain(store, &trusted(key), &position()).await
        },
    )
    .await;
    check_refusal("oversize delta", "cap", async |store, key| {
        let deltas = publish_chain(store, key, 1).await;
        let trusted = trusted(key);
        let head = fetch_head(store, &trusted, &position(), None, NOW, false)
            .await?
            .unwrap();
        fetch_chain(
            store,
            &trusted,
            &head.head,
            &position(),
            deltas[0].len() as u64 - 1,
        )
        .await
        .map(|_| ())
    })
    .await;
    check_refusal("truncated delta", "truncated", async |store, key| {
        let delta = batch(1, 0, "base-digest", 0, vec![put("a", "x")])
            .sign(key)
            .unwrap();
        let cut = &delta[..delta.len() - 10];
        store.put_delta(1, &sha256_hex(&delta), cut).await.unwrap();
        store
            .put_head(&head_for(1, &delta, NOW).sign(key), HeadCondition::Absent)
            .await
            .unwrap();
        read_chain(store, &trusted(key), &position()).await
    })
    .await;
    check_refusal(
        "missing delta",
        "missing from the delta store",
        async |store, key| {
            let delta = batch(1, 0, "base-digest", 0, vec![put("a", "x")])
                .sign(key)
                .unwrap();
            store
                .put_head(&head_for(1, &delta, NOW).sign(key), HeadCondition::Absent)
                .await
                .unwrap();
            read_chain(store, &trusted(key), &position()).await
        },
    )
    .await;
}

#[test]
fn weak_trusted_key_is_refused() {
    // The identity point: a small-order key under which plain `verify` accepts forgeries.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let line = format!("deltacache-ed25519 {}", hex::encode(identity));
    let error = format!("{:#}", TrustedKeys::parse(&line).unwrap_err());
    assert!(error.contains("weak public key"), "{error}");
}

#[test]
fn verification_order_is_cap_then_signature_then_digest_then_parse() {
    let key = PublisherKey::from_seed([4; 32]);
    let trusted = trusted(&key);
    let good = batch(1, 0, "base-digest", 0, vec![put("a", "x")])
        .sign(&key)
        .unwrap();
    // Oversize wins over everything else, even a bad signature.
    let mut bad = good.clone();
    bad[40] ^= 1;
    assert!(matches!(
        verify_object(&bad, ObjectKind::Delta, 10, Some("x"), &trusted),
        Err(VerifyError::Oversize { .. })
    ));
    // A bad signature is reported before a wrong digest.
    assert_eq!(
        verify_object(&bad, ObjectKind::Delta, 1 << 20, Some("x"), &trusted).unwrap_err(),
        VerifyError::BadSignature
    );
    // With a good signature, a wrong digest is reported before the kind is even parsed.
    assert!(matches!(
        verify_object(&good, ObjectKind::Head, 1 << 20, Some("x"), &trusted),
        Err(VerifyError::DigestMismatch { .. })
    ));
    // A signed body that does not parse is refused only after the signature verified.
    let garbage =
        deltacache::delta::format::sign_object(ObjectKind::Delta, b"\x05\x00\x00\x00{not", &key);
    let verified = verify_object(&garbage, ObjectKind::Delta, 1 << 20, None, &trusted).unwrap();
    assert!(matches!(
        DeltaBatch::parse(verified.body),
        Err(VerifyError::Malformed(_))
    ));
}

fn record_strategy() -> impl proptest::strategy::Strategy<Value = DeltaRecord> {
    use proptest::prelude::*;
    prop_oneof![
        ("[a-z0-9-]{1,12}", "\\PC{0,40}").prop_map(|(id, text)| put(&id, &text)),
        "[a-z0-9-]{1,12}".prop_map(|id| DeltaRecord::Delete { id }),
    ]
}

/// encode → sign → store → fetch → verify → decode gives back the records, on both stores.
#[test]
fn round_trip_through_both_stores_is_lossless() {
    use proptest::prelude::*;
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stores = runtime.block_on(async {
        [
            DeltaStore::File(
                FileStore::open(dir.path(), std::time::Duration::from_secs(10)).unwrap(),
            ),
            server.store("roundtrip").await,
        ]
    });
    let key = PublisherKey::from_seed([5; 32]);
    let trusted = trusted(&key);
    let next_seq = std::sync::atomic::AtomicU64::new(1);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        ..Default::default()
    });
    runner
        .run(
            &proptest::collection::vec(record_strategy(), 0..20),
            |records| {
                let seq = next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let original = batch(seq, seq - 1, "base-digest", 0, records.clone());
                let bytes = original.sign(&key).unwrap();
                let digest = sha256_hex(&bytes);
                for store in &stores {
                    let fetched = runtime.block_on(async {
                        store.put_delta(seq, &digest, &bytes).await.unwrap();
                        store
                            .get_delta(seq, &digest, bytes.len() as u64)
                            .await
                            .unwrap()
                            .unwrap()
                    });
                    let verified = verify_object(
                        &fetched,
                        ObjectKind::Delta,
                        bytes.len() as u64,
                        Some(&digest),
                        &trusted,
                    )
                    .unwrap();
                    let decoded = DeltaBatch::parse(verified.body).unwrap();
                    prop_assert_eq!(&decoded.records, &records);
                    prop_assert_eq!(decoded.header.seq, seq);
                    prop_assert_eq!(decoded.header.n_records, records.len() as u64);
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
    let error = store.get_head(64 * 1024 * 4).await.unwrap_err();
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
