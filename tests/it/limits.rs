//! The serving limits, through the real binary over real sockets on 127.0.0.1: header, body
//! and request deadlines, the connection cap with its overflow answers and the probe port,
//! closed metric labels, `/items/batch` and bad path ids, the short `/status`, the query
//! term cap and the search pool.
//!
//! The deadlines under test are set short (hundreds of milliseconds); every wait for them is
//! bounded by [`WAIT`], so a deadline that never fires fails the test instead of hanging it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{Daemon, build_bundle, publish_changes, sample_items};

/// The bound on every wait: far above any deadline configured here.
const WAIT: Duration = Duration::from_secs(15);

/// A daemon serving its own bundle.
struct Served {
    daemon: Daemon,
    /// `http://ADDR` of the probe listener, when it has one.
    probes: Option<String>,
    _dir: tempfile::TempDir,
}

/// `deltacache serve` of a bundle of `items` on a free loopback port, with `extra` flags.
fn serve(items: &[serde_json::Value], extra: &[&str], env: &[(&'static str, String)]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), items);
    let (daemon, probes) = serve_bundle(&bundle, &dir.path().join("state"), extra, env);
    Served {
        daemon,
        probes,
        _dir: dir,
    }
}

/// `deltacache serve` of `bundle` on `state`, with `extra` flags: the daemon and its probe
/// address (printed as `deltacache: probes on http://ADDR`), if any.
fn serve_bundle(
    bundle: &Path,
    state: &Path,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> (Daemon, Option<String>) {
    let mut args = vec![
        "serve",
        "--bundle",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (daemon, preamble) = Daemon::start_with_preamble(&args, env);
    let probes = preamble.iter().find_map(|line| {
        line.strip_prefix("deltacache: probes on ")
            .map(|url| url.trim().to_owned())
    });
    (daemon, probes)
}

/// A fresh connection to `url` (`http://ADDR`).
async fn connect(url: &str) -> TcpStream {
    let stream = TcpStream::connect(url.strip_prefix("http://").unwrap())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// `GET path` as raw HTTP/1.1 bytes.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

/// `POST path` with a JSON body, as raw HTTP/1.1 bytes.
fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the server closes the connection (EOF or reset), within [`WAIT`]; returns
/// what it sent before.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the server kept the connection open for {WAIT:?}; it sent {:?}",
            String::from_utf8_lossy(&received)
        )
    });
    received
}

/// One HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> String {
        let body = self.json();
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not the error shape: {body}"))
            .to_owned()
    }
}

/// Reads one answer (head, then a `Content-Length` body) within [`WAIT`]; `None` when the
/// server closes the connection before a whole answer.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Option<Answer> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(answer) = parse_answer(&received) {
                return Some(answer);
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"))
}

/// The answer `bytes` hold, once they hold all of it.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).expect("the head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("answer without content-length: {head}"));
    let body = bytes.get(end + 4..end + 4 + length)?.to_vec();
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Sends `request` on a fresh connection and reads the answer.
async fn exchange(url: &str, request: &str) -> Option<Answer> {
    let mut stream = connect(url).await;
    stream.write_all(request.as_bytes()).await.ok()?;
    read_answer(&mut stream).await
}

/// Polls `GET {url}/readyz` on fresh connections until it answers 200 (bounded by [`WAIT`]).
async fn wait_ready_raw(url: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(answer) = exchange(url, &get("/readyz")).await
            && answer.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_header_read_timeout() {
    let served = serve(&sample_items(), &["--header-read-timeout", "300ms"], &[]);
    let url = &served.daemon.url;

    // Connected, nothing sent.
    let started = Instant::now();
    let mut silent = connect(url).await;
    let sent = read_until_closed(&mut silent).await;
    let silent_for = started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(250),
        "closed after {silent_for:?}, before the timeout"
    );
    assert!(
        !String::from_utf8_lossy(&sent).contains(" 200 "),
        "{sent:?}"
    );

    // One request answered, then idle on a keep-alive connection.
    let mut kept = connect(url).await;
    // Before sending: the idle clock starts once the answer is written, later than this.
    let asked = Instant::now();
    kept.write_all(get("/livez").as_bytes()).await.unwrap();
    let answer = read_answer(&mut kept).await.expect("an answer to /livez");
    assert_eq!(answer.status, 200);
    assert_ne!(answer.header("connection"), Some("close"));
    assert!(read_until_closed(&mut kept).await.is_empty());
    let idle_for = asked.elapsed();
    assert!(
        idle_for >= Duration::from_millis(250),
        "closed after {idle_for:?}, before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_trickled_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let served = serve(&sample_items(), &["--header-read-timeout", "300ms"], &[]);
    // At 20 ms a byte the whole head would take over 20 s: longer than WAIT.
    let head = format!(
        "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(1000)
    );
    // Before connecting: the server's clock cannot start earlier.
    let started = Instant::now();
    let (mut reader, mut writer) = connect(&served.daemon.url).await.into_split();
    let trickle = tokio::spawn(async move {
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            // The pace of the slow client under test, not a wait for the server.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let sent = read_until_closed(&mut reader).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(
        !String::from_utf8_lossy(&sent).contains(" 200 "),
        "the trickled request was answered: {sent:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}, before the timeout; sent {:?}",
        String::from_utf8_lossy(&sent)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408_after_the_body_timeout_and_a_trickled_one_at_the_request_deadline()
{
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let request_head = "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                        Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n";

    // The body stops after a few bytes: the body timeout answers long before the request
    // deadline could.
    let (stalls, _) = serve_bundle(
        &bundle,
        &dir.path().join("state-stalls"),
        &["--body-read-timeout", "300ms", "--request-timeout", "60s"],
        &[],
    );
    let mut stream = connect(&stalls.url).await;
    let started = Instant::now();
    stream
        .write_all(format!("{request_head}{{\"query_text\": ").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await.expect("an answer");
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.error_code(), "request_timeout");
    assert!(answer.header("content-type").unwrap().contains("json"));
    assert!(
        elapsed >= Duration::from_millis(250),
        "408 after {elapsed:?}, before the body timeout"
    );
    let metrics = reqwest::get(format!("{}/metrics", stalls.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"deltacache_http_requests_total{route="/search",method="POST",status="408"} 1"#
        ),
        "the 408 is counted: {metrics}"
    );

    // A byte every 100 ms never pauses for the 1 s body timeout, but 2000 bytes would take
    // 200 s: the 2 s request deadline cuts it off.
    let (trickles, _) = serve_bundle(
        &bundle,
        &dir.path().join("state-trickles"),
        &["--body-read-timeout", "1s", "--request-timeout", "2s"],
        &[],
    );
    let (mut reader, mut writer) = connect(&trickles.url).await.into_split();
    let started = Instant::now();
    writer.write_all(request_head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        loop {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            // The pace of the slow client under test, not a wait for the server.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer = read_answer(&mut reader).await.expect("an answer");
    let elapsed = started.elapsed();
    trickle.abort();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.error_code(), "request_timeout");
    assert!(
        elapsed >= Duration::from_millis(1900),
        "408 after {elapsed:?}, before the request deadline"
    );
}

/// Four connections that send nothing. Opened before any other, they take the four slots
/// of `--max-connections 4`: the server accepts in the order connections arrive.
async fn fill_main_port(url: &str) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(url).await);
    }
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_above_the_limit_get_a_quick_503_but_probes_still_answer() {
    let served = serve(&sample_items(), &["--max-connections", "4"], &[]);
    let url = &served.daemon.url;
    let mut held = fill_main_port(url).await;
    // Readiness is a probe route, so connections above the limit answer it.
    wait_ready_raw(url).await;

    let search = post("/search", r#"{"query_text": "database"}"#);
    let started = Instant::now();
    let mut stream = connect(url).await;
    stream.write_all(search.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await.expect("an answer");
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.error_code(), "overloaded");
    assert!(elapsed < Duration::from_secs(5), "503 after {elapsed:?}");
    // Like every answer, it names the data version and is counted.
    assert!(answer.header("x-data-version").is_some(), "{answer:?}");
    // One answer, then the overflow connection is closed.
    assert!(read_until_closed(&mut stream).await.is_empty());

    let livez = exchange(url, &get("/livez")).await.expect("an answer");
    assert_eq!(livez.status, 200, "{livez:?}");
    assert_eq!(livez.json()["status"], "alive");
    let lookup = exchange(url, &get("/items/db-1")).await.expect("an answer");
    assert_eq!(lookup.status, 503, "{lookup:?}");
    let metrics = exchange(url, &get("/metrics")).await.expect("an answer");
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains(r#"route="unmatched",method="POST",status="503""#),
        "the overflow 503s are counted: {metrics}"
    );

    // A slot freed by a client that leaves serves data routes again.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = exchange(url, &search).await.expect("an answer");
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_port_answers_while_the_main_port_is_full() {
    let served = serve(
        &sample_items(),
        &["--max-connections", "4", "--probe-listen", "127.0.0.1:0"],
        &[],
    );
    let url = &served.daemon.url;
    let probes = served
        .probes
        .as_deref()
        .expect("the daemon prints `deltacache: probes on http://ADDR`");
    assert_ne!(probes, url);
    let _held = fill_main_port(url).await;
    wait_ready_raw(probes).await;

    let search = exchange(url, &post("/search", r#"{"query_text": "database"}"#))
        .await
        .expect("an answer");
    assert_eq!(search.status, 503, "the main port is full: {search:?}");

    let client = reqwest::Client::new();
    for route in ["/livez", "/readyz", "/metrics"] {
        let response = client.get(format!("{probes}{route}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{route} on the probe port");
        let text = response.text().await.unwrap();
        if route == "/metrics" {
            assert!(
                text.contains("deltacache_http_connections_over_limit_total"),
                "{text}"
            );
        }
    }
    // Only probes: the data routes are not served there.
    let response = client
        .post(format!("{probes}/search"))
        .json(&serde_json::json!({"query_text": "database"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invented_method_is_labelled_other_in_metrics() {
    let served = serve(&sample_items(), &[], &[]);
    let url = &served.daemon.url;
    let client = reqwest::Client::new();
    served.daemon.wait_ready(&client).await;
    let answer = exchange(url, &get("/livez").replacen("GET", "FOOBAR", 1))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 405, "{answer:?}");
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("FOOBAR"), "{metrics}");
    assert!(
        metrics.contains(
            r#"deltacache_http_requests_total{route="/livez",method="other",status="405"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_named_batch_is_fetched_with_get_and_bad_path_ids_answer_in_json() {
    let mut items = sample_items();
    items.push(serde_json::json!({"id": "batch", "category": "kitchen", "text": "a batch of sourdough loaves"}));
    let served = serve(&items, &[], &[]);
    let url = &served.daemon.url;
    let client = reqwest::Client::new();
    served.daemon.wait_ready(&client).await;

    let response = client
        .get(format!("{url}/items/batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-data-version"], "0");
    let item: serde_json::Value = response.json().await.unwrap();
    assert_eq!(item, items[6]);

    let response = client
        .post(format!("{url}/items/batch"))
        .json(&serde_json::json!({"ids": ["batch", "db-1", "nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["items"], serde_json::json!([items[6], items[0]]));
    assert_eq!(body["missing"], serde_json::json!(["nope"]));

    // %FF decodes to a byte that is not UTF-8.
    let answer = exchange(url, &get("/items/%FF")).await.expect("an answer");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.header("content-type").unwrap().contains("json"));
    assert_eq!(answer.error_code(), "invalid_path");
    assert!(
        !answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_names_paths_store_and_errors_only_with_status_detail() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    // A delta store whose repository has another root than the one the daemon trusts: the
    // boot-time sync fails, leaving an error to report, and the bundle is served stale.
    let publisher_dir = dir.path().join("publisher");
    let stranger_dir = dir.path().join("stranger");
    std::fs::create_dir_all(&publisher_dir).unwrap();
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let publisher = super::support::Trust::new(&publisher_dir);
    let stranger = super::support::Trust::new(&stranger_dir);
    let store = format!("file://{}", dir.path().join("store").display());
    publisher.init_store(&store, &Default::default()).await;
    publish_changes(
        &dir.path().join("changes.jsonl"),
        &store,
        &publisher.key,
        &bundle,
        Default::default(),
        &[serde_json::json!({"op": "delete", "id": "kit-1"})],
    )
    .await;
    let dir_text = dir.path().to_str().unwrap().to_owned();
    let args = [
        "--store",
        store.as_str(),
        "--trusted-root",
        stranger.root.to_str().unwrap(),
    ];
    let client = reqwest::Client::new();

    let (short, _) = serve_bundle(
        &bundle,
        &dir.path().join("state-short"),
        &args,
        &[("DELTACACHE_STATUS_DETAIL", "false".into())],
    );
    short.wait_ready(&client).await;
    let status = short.status(&client).await;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["sync"]["stale"], true, "the sync failed: {status}");
    for absent in [
        &status["bundle"],
        &status["version"],
        &status["sync"]["store"],
        &status["sync"]["last_error"],
    ] {
        assert!(absent.is_null(), "{status}");
    }
    assert!(
        !status.to_string().contains(&dir_text),
        "a path leaked: {status}"
    );
    drop(short);

    let (detailed, _) = serve_bundle(
        &bundle,
        &dir.path().join("state-detailed"),
        &[&args[..], &["--status-detail", "true"]].concat(),
        &[("DELTACACHE_STATUS_DETAIL", "false".into())],
    );
    detailed.wait_ready(&client).await;
    let status = detailed.status(&client).await;
    assert_eq!(status["bundle"], bundle.to_str().unwrap(), "{status}");
    assert_eq!(status["sync"]["store"], store.as_str(), "{status}");
    assert!(
        !status["sync"]["last_error"].as_str().unwrap().is_empty(),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_with_more_distinct_known_terms_than_the_cap_is_refused() {
    let served = serve(&sample_items(), &["--max-query-terms", "3"], &[]);
    let url = &served.daemon.url;
    let client = reqwest::Client::new();
    served.daemon.wait_ready(&client).await;
    let search = |text: &str| {
        super::support::post_search(
            &client,
            url,
            serde_json::json!({"query_text": text, "top_k": 5}),
        )
    };
    let (status, body) = search("database snapshots relational transactions").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "too_many_terms");
    // Repeats and words the model does not know are not counted.
    let (status, body) = search("database database snapshots relational zzyzx unheardofword").await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["db-1", "db-2"]);
}

/// Many items sharing many words, so one search of them all with `top_k` 1000 takes a while.
fn heavy_items() -> Vec<serde_json::Value> {
    (0..3000)
        .map(|i| {
            let words: Vec<String> = (0..24)
                .filter(|w| (i + w) % 3 != 0)
                .map(|w| format!("common{w}"))
                .collect();
            serde_json::json!({
                "id": format!("heavy-{i:05}"),
                "category": "bulk",
                "text": format!("{} unique{i}", words.join(" ")),
            })
        })
        .collect()
}

/// A search's status, `Retry-After`, body and time taken.
type SearchAnswer = (u16, Option<String>, serde_json::Value, Duration);

/// Sends 32 searches at once and, on connections of its own, `GET /livez` over and over until
/// they are all answered: the search answers and the /livez latencies.
async fn search_round(url: &str, body: &serde_json::Value) -> (Vec<SearchAnswer>, Vec<Duration>) {
    let client = reqwest::Client::new();
    let mut searches = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        searches.spawn(async move {
            let started = Instant::now();
            let response = client
                .post(format!("{url}/search"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body, started.elapsed())
        });
    }
    let searching = Arc::new(AtomicBool::new(true));
    let livez = tokio::spawn({
        let (url, searching) = (url.to_owned(), searching.clone());
        async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            loop {
                let started = Instant::now();
                let response = client.get(format!("{url}/livez")).send().await.unwrap();
                assert_eq!(response.status(), 200, "/livez while searches run");
                latencies.push(started.elapsed());
                if !searching.load(Ordering::SeqCst) {
                    return latencies;
                }
            }
        }
    });
    let answers = searches.join_all().await;
    searching.store(false, Ordering::SeqCst);
    (answers, livez.await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn searches_beyond_the_pool_get_a_quick_503_and_livez_stays_answerable() {
    let served = serve(
        &heavy_items(),
        &["--search-threads", "1", "--search-queue", "0"],
        &[],
    );
    let url = &served.daemon.url;
    let client = reqwest::Client::new();
    served.daemon.wait_ready(&client).await;
    let query = (0..24)
        .map(|w| format!("common{w}"))
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({"query_text": query, "top_k": 1000});

    // One search runs at a time and none waits: of 32 at once, some are refused. Rounds
    // repeat until one is (bounded), so a slow machine cannot make it flaky.
    let deadline = Instant::now() + WAIT;
    let (mut n_ok, mut n_refused, mut livez_latencies) = (0, 0, Vec::new());
    while n_refused == 0 {
        assert!(
            Instant::now() < deadline,
            "no search was refused in {WAIT:?}"
        );
        let (answers, latencies) = search_round(url, &body).await;
        livez_latencies.extend(latencies);
        for (status, retry_after, body, elapsed) in answers {
            match status {
                200 => {
                    n_ok += 1;
                    assert_eq!(body["results"].as_array().unwrap().len(), 1000);
                }
                503 => {
                    n_refused += 1;
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    assert_eq!(retry_after.as_deref(), Some("1"));
                    assert!(
                        elapsed < Duration::from_secs(5),
                        "a refusal took {elapsed:?}"
                    );
                }
                other => panic!("search answered {other}: {body}"),
            }
        }
    }
    assert!(n_ok >= 1, "no search ran");
    let slowest = livez_latencies.iter().max().unwrap();
    eprintln!(
        "search pool: {n_ok} answered, {n_refused} refused; /livez answered {} times, slowest \
         {slowest:?}",
        livez_latencies.len()
    );
    assert!(
        *slowest < Duration::from_secs(5),
        "/livez took {slowest:?} while searches ran"
    );
    // The slots are given back.
    let (status, body) = super::support::post_search(&client, url, body).await;
    assert_eq!(status, 200, "{body}");
}

/// A search that reads a handful of postings runs on the worker that received it, so it is
/// answered even while the search pool is full and refusing heavy searches with 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_cheap_search_is_answered_while_the_search_pool_refuses_heavy_ones() {
    let served = serve(
        &heavy_items(),
        &["--search-threads", "1", "--search-queue", "0"],
        &[],
    );
    let url = served.daemon.url.clone();
    let client = reqwest::Client::new();
    served.daemon.wait_ready(&client).await;
    let heavy_query = (0..24)
        .map(|w| format!("common{w}"))
        .collect::<Vec<_>>()
        .join(" ");
    let heavy = serde_json::json!({"query_text": heavy_query, "top_k": 1000});
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no heavy search was refused");
        let searching = Arc::new(AtomicBool::new(true));
        let cheap = tokio::spawn({
            let (url, client, searching) = (url.clone(), client.clone(), searching.clone());
            async move {
                let mut statuses = Vec::new();
                while searching.load(Ordering::SeqCst) {
                    let (status, body) = super::support::post_search(
                        &client,
                        &url,
                        serde_json::json!({"query_text": "unique7", "top_k": 1}),
                    )
                    .await;
                    if status == 200 {
                        assert_eq!(body["results"][0]["id"], "heavy-00007", "{body}");
                    }
                    statuses.push(status);
                }
                statuses
            }
        });
        let (answers, _) = search_round(&url, &heavy).await;
        searching.store(false, Ordering::SeqCst);
        let statuses = cheap.await.unwrap();
        let refused = answers.iter().filter(|a| a.0 == 503).count();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        if refused > 0 && !statuses.is_empty() {
            let inline = served
                .daemon
                .metric(&client, "deltacache_searches_inline_total")
                .await;
            assert!(inline >= statuses.len() as f64, "{inline}");
            break;
        }
    }
}
