//! Shared helpers: small catalogues, bundles built through the library, and the real binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use deltacache::bundle::build::{BuildOptions, InputFormat, ModelSource, build_base};
use deltacache::bundle::items::ItemFields;
use deltacache::search::tfidf::{FitOptions, StopWords};

/// Path of the built binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deltacache"))
}

/// A small catalogue with predictable search answers.
pub fn sample_items() -> Vec<serde_json::Value> {
    let texts = [
        ("db-1", "database", "fast key value database with snapshots"),
        (
            "db-2",
            "database",
            "relational database with SQL and transactions",
        ),
        ("net-1", "networking", "load balancer with TLS termination"),
        (
            "net-2",
            "networking",
            "reverse proxy and load balancer for HTTP",
        ),
        ("kit-1", "kitchen", "espresso machine with café crema"),
        ("kit-2", "kitchen", "cast iron skillet for even heating"),
    ];
    texts
        .iter()
        .map(|(id, category, text)| {
            serde_json::json!({"id": id, "category": category, "text": text, "price": 10.5})
        })
        .collect()
}

/// Writes items as JSONL.
pub fn write_jsonl(path: &Path, items: &[serde_json::Value]) {
    let mut text = String::new();
    for item in items {
        text.push_str(&serde_json::to_string(item).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Builds a bundle of `items` under `dir/bundle` through the library.
pub fn build_bundle(dir: &Path, items: &[serde_json::Value]) -> PathBuf {
    let input = dir.join("items.jsonl");
    write_jsonl(&input, items);
    let out = dir.join("bundle");
    build_base(&BuildOptions {
        input,
        input_format: InputFormat::Jsonl,
        filter_fields: vec!["category".into()],
        filter_fields_named: false,
        out: out.clone(),
        dataset: Some("sample".into()),
        fields: ItemFields::default(),
        model: ModelSource::Fit(FitOptions {
            max_features: None,
            stop_words: Some(StopWords::Named("english".into())),
        }),
        seq: 0,
        chain: None,
    })
    .unwrap();
    out
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// A running `deltacache serve` (or `demo`), killed when dropped.
pub struct Daemon {
    /// The child process.
    pub child: Child,
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Daemon {
    /// Starts the binary with `args` (which must make it listen on port 0) and waits for the
    /// line that names its address.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with_env(args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&'static str, String)]) -> Daemon {
        Self::start_with_preamble(args, env).0
    }

    /// [`Daemon::start_with_env`], also returning the lines printed before the one that names
    /// the address (such as `deltacache: probes on http://ADDR`).
    pub fn start_with_preamble(
        args: &[&str],
        env: &[(&'static str, String)],
    ) -> (Daemon, Vec<String>) {
        Self::spawn(Self::command(args, env))
    }

    /// The command [`Daemon::start_with_env`] runs: the binary with `args`, `RUST_LOG=warn`,
    /// the detailed `/status`, and `env`; stdout piped, stderr inherited.
    pub fn command(args: &[&str], env: &[(&'static str, String)]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env("RUST_LOG", "warn")
            // The tests read /status's detail (error text); a test of the short form
            // passes DELTACACHE_STATUS_DETAIL=false in `env`.
            .env("DELTACACHE_STATUS_DETAIL", "true")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    /// Spawns `command` (made by [`Daemon::command`], perhaps changed) and waits for the line
    /// that names its address; also returns the lines printed before it.
    pub fn spawn(mut command: Command) -> (Daemon, Vec<String>) {
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut preamble = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .expect("daemon exited before it listened")
                .unwrap();
            if let Some(url) = line.strip_prefix("deltacache: listening on ") {
                break url.trim().to_owned();
            }
            preamble.push(line);
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (Daemon { child, url }, preamble)
    }

    /// One counter or gauge from `/metrics` (the sum of its series; 0 when absent).
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// `GET /status` as JSON.
    pub async fn status(&self, client: &reqwest::Client) -> serde_json::Value {
        client
            .get(format!("{}/status", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls `/readyz` until it answers 200 (bounded by a deadline, not a sleep).
    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon never became ready"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deltacache serve` of `bundle` on the state dir `state`, on a free loopback port.
pub fn serve_local(bundle: &Path, state: &Path) -> Daemon {
    Daemon::start(&[
        "serve",
        "--bundle",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
}

/// `deltacache serve` of `bundle` on `state`, following `store` from the root `trusted_root`,
/// on a free loopback port, with `extra` flags.
pub fn serve_following(
    bundle: &Path,
    state: &Path,
    store: &str,
    trusted_root: &Path,
    extra: &[&str],
) -> Daemon {
    let mut args = vec![
        "serve",
        "--bundle",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--trusted-root",
        trusted_root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

/// `POST {url}/search` with `body`: the status and the JSON answer.
pub async fn post_search(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client
        .post(format!("{url}/search"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A root of trust and its keys, for a test repository: one key that the root lists for
/// every role (threshold 1), `key`, and the root file instances trust, `root`.
pub struct Trust {
    /// The secret key (targets, snapshot, timestamp and root).
    pub key: PathBuf,
    /// root.json, version 1, signed by `key`.
    pub root: PathBuf,
}

impl Trust {
    /// Makes a key and a root in `dir`.
    pub fn new(dir: &Path) -> Trust {
        let key = dir.join("publisher.key");
        deltacache::tuf::keys::generate(&key).unwrap();
        let public = deltacache::tuf::keys::public_path(&key);
        let keys = deltacache::tuf::ceremony::RootKeys {
            root: (vec![public.clone()], 1),
            targets: (vec![public.clone()], 1),
            online: (vec![public], 1),
        };
        let (bytes, status) = block_on(deltacache::tuf::ceremony::init_root(
            &keys,
            std::time::Duration::from_secs(3600 * 24 * 365),
            std::slice::from_ref(&key),
        ))
        .unwrap();
        assert!(status.complete(), "{status}");
        let root = dir.join("root.json");
        std::fs::write(&root, bytes).unwrap();
        Trust { key, root }
    }

    /// Creates the repository in `store`.
    pub async fn init_store(&self, store: &str, remote: &deltacache::delta_store::RemoteSettings) {
        let (signer, id) = deltacache::tuf::keys::FileKey::load(&self.key).unwrap();
        deltacache::delta::publish::init_repository(
            store,
            remote,
            &std::fs::read(&self.root).unwrap(),
            &(vec![signer], vec![id]),
            None,
        )
        .await
        .unwrap();
    }
}

/// Runs a future to completion on a runtime of its own (for set-up outside async tests).
pub fn block_on<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(future)
                })
                .join()
                .unwrap()
        }),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future),
    }
}

/// Writes `changes` as JSONL to `changes_file` and publishes them as the next delta of
/// `store`, signed with `key`, through the library.
pub async fn publish_changes(
    changes_file: &Path,
    store: &str,
    key: &Path,
    bundle: &Path,
    remote: deltacache::delta_store::RemoteSettings,
    changes: &[serde_json::Value],
) {
    std::fs::write(
        changes_file,
        changes.iter().map(|c| format!("{c}\n")).collect::<String>(),
    )
    .unwrap();
    deltacache::delta::publish::publish(&deltacache::delta::publish::PublishOptions {
        store: store.to_owned(),
        keys: vec![key.to_path_buf()],
        trusted_root: None,
        bundle: bundle.to_path_buf(),
        changes: deltacache::delta::publish::ChangeSource::Changes(changes_file.to_path_buf()),
        expires_in: std::time::Duration::from_secs(3600),
        dry_run: false,
        force: false,
        remote,
        tip_cache: None,
    })
    .await
    .unwrap();
}

/// Publishes the fleet policy `change` makes (signed with `key`).
pub async fn set_fleet_policy(
    store: &str,
    key: &Path,
    remote: deltacache::delta_store::RemoteSettings,
    change: deltacache::delta::fleet::PolicyChange,
) -> deltacache::delta::fleet::FleetPolicy {
    let at = deltacache::delta::fleet::FleetStore {
        store: store.to_owned(),
        trusted_root: None,
        remote,
    };
    deltacache::delta::fleet::set(
        &at,
        &[key.to_path_buf()],
        &change,
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap()
}

/// `output`).
pub fn sync_command(bundle: &Path, state: &Path, store: &str, trusted_root: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .args([
            "sync",
            "--bundle",
            bundle.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--store",
            store,
            "--trusted-root",
            trusted_root.to_str().unwrap(),
        ])
        .stdout(Stdio::null());
    command
}

/// sha256 of every file under `dir`, by path (to show a directory was not changed).
pub fn file_digests(dir: &Path) -> std::collections::BTreeMap<String, String> {
    deltacache::bundle::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|rel| {
            let digest = deltacache::bundle::digest_file(&dir.join(&rel)).unwrap();
            (rel, digest.sha256)
        })
        .collect()
}
