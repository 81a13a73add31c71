//! The LevelDB bound of an apply: the records of a chain of deltas written as plain
//! rusty-leveldb write batches (one batch per delta, no verification, no vector or filter
//! index, no fsync) into a clone of the base version's database, timed.
//! `scripts/bench_sync.sh --leveldb-bound` runs it beside each boot to ready and prints
//! apply ÷ this loop.
//!
//! ```sh
//! DELTACACHE_BENCH_DB=target/bench/sync/bundle-1000000/db \
//! DELTACACHE_BENCH_CHANGES=target/bench/sync/changes-1.jsonl,target/bench/sync/changes-2.jsonl \
//!     cargo bench --bench leveldb_bound
//! ```
//!
//! The changes files are `publish-delta --changes` JSONL (`{"op":"put","item":{...}}`,
//! `{"op":"delete","id":...}`); each put writes the item's JSON as serde_json prints it
//! under its item key, each delete removes the key. The database is cloned as a version is
//! (tables hard-linked, the rest copied) into a temporary directory first. Prints one line:
//! `leveldb_bound: records=N deltas=D seconds=S records_per_s=R`.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

/// One record of a delta: an item key and its new JSON, or `None` for a delete.
type Record = (Vec<u8>, Option<Vec<u8>>);

fn clone_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str == "LOCK" || name_str.starts_with("LOG") {
            continue;
        }
        let target = to.join(&name);
        if name_str.ends_with(".ldb") || name_str.ends_with(".sst") {
            std::fs::hard_link(entry.path(), &target)
                .or_else(|_| std::fs::copy(entry.path(), &target).map(|_| ()))
                .unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn main() {
    let db_dir = std::env::var("DELTACACHE_BENCH_DB")
        .expect("set DELTACACHE_BENCH_DB to the base version's LevelDB directory");
    let changes: Vec<String> = std::env::var("DELTACACHE_BENCH_CHANGES")
        .expect("set DELTACACHE_BENCH_CHANGES to comma-separated changes JSONL files")
        .split(',')
        .map(str::to_owned)
        .collect();
    // Decoded before the clock starts, as apply's records are decoded by fetch + verify.
    let deltas: Vec<Vec<Record>> = changes
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("DELTACACHE_BENCH_CHANGES: open {path}: {e}"));
            std::io::BufReader::new(file)
                .lines()
                .map(|line| {
                    let change: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                    match change["op"].as_str() {
                        Some("put") => {
                            let item = &change["item"];
                            let id = item["id"].as_str().expect("a put's item has a string id");
                            (
                                deltacache::db::leveldb::item_key(id),
                                Some(item.to_string().into_bytes()),
                            )
                        }
                        Some("delete") => {
                            let id = change["id"].as_str().expect("a delete has a string id");
                            (deltacache::db::leveldb::item_key(id), None)
                        }
                        other => panic!("{path}: unknown op {other:?}"),
                    }
                })
                .collect()
        })
        .collect();
    let records: usize = deltas.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("db");
    let started = Instant::now();
    clone_db(Path::new(&db_dir), &clone);
    let mut db = deltacache::db::leveldb::open_db(&clone, false).unwrap();
    for delta in &deltas {
        let mut batch = rusty_leveldb::WriteBatch::default();
        for (key, value) in delta {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        db.write(batch, false).unwrap();
    }
    db.close().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "leveldb_bound: records={records} deltas={} seconds={seconds:.3} records_per_s={:.0}",
        deltas.len(),
        records as f64 / seconds
    );
}
