//! In-process stage timings of the search path, without HTTP: embed, top-k, metadata for 10
//! ids, and the whole `Catalog::search`; see scripts/bench.sh, which runs it for each corpus.
//!
//! ```text
//! DELTACACHE_BENCH_BUNDLE=target/bench/bundle-10k \
//! DELTACACHE_BENCH_QUERIES=target/bench/queries-10k.txt \
//!     cargo bench --bench stages
//! ```
//!
//! Optional: `DELTACACHE_BENCH_ITERS` (timed iterations per stage, default 20000),
//! `DELTACACHE_BENCH_WARMUP` (untimed iterations first, default 2000),
//! `DELTACACHE_BENCH_THREADS_SECS` (seconds of the multi-threaded search run, default 3;
//! 0 skips it).
//!
//! Output is a Markdown table (one row per stage, times in microseconds) followed by one
//! `stages:` line of `key=value` pairs for scripts.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deltacache::catalog::Catalog;
use deltacache::server::{ServeOptions, load_catalog};

const TOP_K: usize = 10;

fn main() {
    let (Some(bundle), Some(queries)) = (
        std::env::var_os("DELTACACHE_BENCH_BUNDLE"),
        std::env::var_os("DELTACACHE_BENCH_QUERIES"),
    ) else {
        println!(
            "stages: set DELTACACHE_BENCH_BUNDLE=<bundle dir> and DELTACACHE_BENCH_QUERIES=<queries file> to run (see scripts/bench.sh); nothing to do"
        );
        return;
    };
    if let Err(error) = run(Path::new(&bundle), Path::new(&queries)) {
        eprintln!("stages: error: {error:#}");
        std::process::exit(1);
    }
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("{name}={value:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn run(bundle: &Path, queries_path: &Path) -> anyhow::Result<()> {
    let iters = env_number("DELTACACHE_BENCH_ITERS", 20_000)?.max(100) as usize;
    let warmup = env_number("DELTACACHE_BENCH_WARMUP", 2_000)? as usize;
    let thread_secs = env_number("DELTACACHE_BENCH_THREADS_SECS", 3)?;

    let text = std::fs::read_to_string(queries_path)
        .with_context(|| format!("read queries file {}", queries_path.display()))?;
    let queries: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if queries.is_empty() {
        bail!("queries file {} holds no queries", queries_path.display());
    }

    // The state dir goes beside the bundle when possible, so clones are hard links as in
    // production; otherwise in the system temp dir.
    let state_parent = bundle
        .canonicalize()
        .ok()
        .and_then(|b| b.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let state_root = tempfile::Builder::new()
        .prefix("deltacache-bench-state-")
        .tempdir_in(&state_parent)
        .or_else(|_| tempfile::tempdir())
        .context("create a temporary state dir")?;
    let n_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = ServeOptions {
        reader_shards: n_threads,
        ..ServeOptions::new(
            bundle.to_path_buf(),
            state_root.path().join("state"),
            "127.0.0.1:0".parse().expect("a valid address"),
        )
    };
    let load_started = Instant::now();
    let (state, catalog) = load_catalog(&options).context("load the catalog")?;
    let load_secs = load_started.elapsed().as_secs_f64();
    let n_items = catalog.index().n_items();
    if n_items == 0 {
        bail!("bundle {} holds no items", bundle.display());
    }

    // What the metadata stage reads: each query's own top-10 ids (what a search reads),
    // padded with pseudo-random ids when a query has fewer than 10 hits.
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut hit_ids: Vec<Vec<String>> = Vec::with_capacity(queries.len());
    let mut total_hits = 0usize;
    for query in &queries {
        let vector = catalog.model().embed(query);
        let mut ids: Vec<String> = catalog
            .index()
            .top_k(&vector, TOP_K)
            .iter()
            .map(|hit| catalog.index().id(hit.slot).to_owned())
            .collect();
        total_hits += ids.len();
        while ids.len() < TOP_K {
            ids.push(random_id(&catalog, &mut rng));
        }
        hit_ids.push(ids);
    }
    let random_ids: Vec<Vec<String>> = (0..queries.len())
        .map(|_| (0..TOP_K).map(|_| random_id(&catalog, &mut rng)).collect())
        .collect();
    let vectors: Vec<_> = queries.iter().map(|q| catalog.model().embed(q)).collect();
    // One equality filter per query, on the first indexed field, cycling through the values
    // seen on a sample of items (with the benchmark corpus: one category in twelve).
    let filters = sample_filters(&catalog, &mut rng, queries.len())?;
    let mean_terms = vectors.iter().map(Vec::len).sum::<usize>() as f64 / vectors.len() as f64;

    let cpu_before = CpuSample::now();
    let stages = [
        time_stage("embed", iters, warmup, queries.len(), |i| {
            black_box(catalog.model().embed(black_box(queries[i])));
        }),
        time_stage("top_k(10)", iters, warmup, queries.len(), |i| {
            black_box(catalog.index().top_k(black_box(&vectors[i]), TOP_K));
        }),
        time_stage("get x10 (hit ids)", iters, warmup, queries.len(), |i| {
            for id in &hit_ids[i] {
                black_box(catalog.get(id).expect("metadata read"));
            }
        }),
        time_stage("get x10 (random ids)", iters, warmup, queries.len(), |i| {
            for id in &random_ids[i] {
                black_box(catalog.get(id).expect("metadata read"));
            }
        }),
        time_stage("search(10)", iters, warmup, queries.len(), |i| {
            black_box(
                catalog
                    .search(black_box(queries[i]), TOP_K, None)
                    .expect("search"),
            );
        }),
        time_stage("search(10) + filter", iters, warmup, queries.len(), |i| {
            black_box(
                catalog
                    .search(black_box(queries[i]), TOP_K, filters[i].as_ref())
                    .expect("search"),
            );
        }),
    ];

    println!(
        "bundle {} | {} items | {} queries ({:.2} known terms, {:.2} hits on average) | load {:.2} s | {} timed iterations per stage after {} warm-up",
        bundle.display(),
        n_items,
        queries.len(),
        mean_terms,
        total_hits as f64 / queries.len() as f64,
        load_secs,
        iters,
        warmup
    );
    println!();
    println!("| stage | median µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|");
    for stage in &stages {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            stage.name,
            micros(stage.median),
            micros(stage.p99),
            micros(stage.mean)
        );
    }

    let mut machine = format!("stages: items={n_items} load_s={load_secs:.3}");
    for stage in &stages {
        let key: String = stage
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let key = key.trim_matches('_').replace("__", "_");
        machine.push_str(&format!(
            " {key}_p50_us={:.2} {key}_p99_us={:.2}",
            micros(stage.median),
            micros(stage.p99)
        ));
    }

    if thread_secs > 0 {
        let per_sec = threaded_search(&catalog, &queries, n_threads, thread_secs);
        println!(
            "| search(10), {n_threads} threads, {thread_secs} s | {per_sec:.0} searches/s in total | | |"
        );
        machine.push_str(&format!(
            " search_threads={n_threads} search_per_s={per_sec:.0}"
        ));
    }
    if let (Some(before), Some(after)) = (cpu_before, CpuSample::now()) {
        let others = after.others_cores_since(&before);
        println!();
        println!(
            "The rest of the machine used {others:.2} cores on average meanwhile (0 on an idle machine; compare runs only when it is)."
        );
        machine.push_str(&format!(" other_cores={others:.2}"));
    }
    println!();
    println!("{machine}");

    drop(catalog);
    drop(state);
    Ok(())
}

/// `n` filters on the catalog's first indexed field (`None` when it indexes none).
fn sample_filters(
    catalog: &Catalog,
    rng: &mut u64,
    n: usize,
) -> anyhow::Result<Vec<Option<deltacache::search::filter::Filter>>> {
    let Some(field) = catalog.filter_fields().first().cloned() else {
        return Ok(vec![None; n]);
    };
    let mut values = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let id = random_id(catalog, rng);
        if let Some(json) = catalog.get(&id)?
            && let Ok(item) = serde_json::from_slice::<serde_json::Value>(&json)
            && let Some(value) = item.get(&field)
            && !value.is_null()
        {
            values.insert(value.to_string());
        }
    }
    let values: Vec<String> = values.into_iter().collect();
    if values.is_empty() {
        return Ok(vec![None; n]);
    }
    (0..n)
        .map(|i| {
            let value: serde_json::Value = serde_json::from_str(&values[i % values.len()])?;
            let mut object = serde_json::Map::new();
            object.insert(field.clone(), value);
            Ok(Some(catalog.parse_filter(&object)?))
        })
        .collect()
}

fn random_id(catalog: &Catalog, rng: &mut u64) -> String {
    // xorshift64*: deterministic, no dependency.
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    let value = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let slot = (value % catalog.index().n_items() as u64) as u32;
    catalog.index().id(slot).to_owned()
}

struct Stage {
    name: &'static str,
    median: Duration,
    p99: Duration,
    mean: Duration,
}

/// Runs `body(i % n_inputs)` `warmup` times untimed, then `iters` times timed one by one.
fn time_stage(
    name: &'static str,
    iters: usize,
    warmup: usize,
    n_inputs: usize,
    mut body: impl FnMut(usize),
) -> Stage {
    for i in 0..warmup {
        body(i % n_inputs);
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(iters);
    for i in 0..iters {
        let input = (warmup + i) % n_inputs;
        let started = Instant::now();
        body(input);
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    let p99_at = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    Stage {
        name,
        median: samples[samples.len() / 2],
        p99: samples[p99_at],
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
    }
}

/// Whole searches per second with `n_threads` threads sharing the catalog, as the server's
/// workers do (an upper bound for `/search` without HTTP).
fn threaded_search(catalog: &Catalog, queries: &[&str], n_threads: usize, secs: u64) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..n_threads {
            let (stop, done) = (&stop, &done);
            scope.spawn(move || {
                let mut i = t * 7919;
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    black_box(
                        catalog
                            .search(queries[i % queries.len()], TOP_K, None)
                            .expect("search"),
                    );
                    i += 1;
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// CPU time of this process and of the whole machine (Linux `/proc`), to tell how much of
/// the machine other processes took while the stages ran.
struct CpuSample {
    at: Instant,
    own_ticks: u64,
    machine_busy_ticks: u64,
}

impl CpuSample {
    fn now() -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After the command name: index 0 is field 3 (state), 11 is utime (14), 12 stime (15).
        let after_comm: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let own_ticks =
            after_comm.get(11)?.parse::<u64>().ok()? + after_comm.get(12)?.parse::<u64>().ok()?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // Everything but idle (3) and iowait (4).
        let machine_busy_ticks = cpu.iter().sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
        Some(CpuSample {
            at: Instant::now(),
            own_ticks,
            machine_busy_ticks,
        })
    }

    /// Cores used by other processes since `before` (clock ticks are 1/100 s on Linux).
    fn others_cores_since(&self, before: &CpuSample) -> f64 {
        let ticks = self
            .machine_busy_ticks
            .saturating_sub(before.machine_busy_ticks) as f64
            - self.own_ticks.saturating_sub(before.own_ticks) as f64;
        (ticks / 100.0 / self.at.duration_since(before.at).as_secs_f64()).max(0.0)
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
