#!/usr/bin/env bash
# Migration and filter-index benchmarks (the figures in BENCHMARKS.md, "Migrations").
#
#   scripts/bench_migrations.sh [--items N] [--corpus FILE] [--schema1-bundle DIR] [--runs R] [--out DIR]
#
# Each figure beside its comparison, in one run, R runs each (default 3), interleaved:
# 1. build-base from JSONL with the filter index (migration 0002 run on the new store)
#    beside the same build with --filter-fields "" (no index);
# 2. build-base --from-leveldb from a plain id -> JSON LevelDB written by C++ LevelDB through
#    plyvel (the original pipeline's layout; migrations 0001 and 0002 on a copy) beside
#    build-base --input of the same items as JSONL (needs `pip install plyvel`; skipped
#    without it);
# 3. boot to ready on a fresh state dir of a bundle in db schema 1 (migrated as it is
#    cloned) beside a bundle of the same items in the current schema. A schema-1 bundle is
#    one written by a binary before migration 0002 (commit 24f5cf1) from this script's
#    corpus (gen_corpus.py --seed 42, as scripts/bench.sh of that commit made
#    target/bench/bundle-1m); pass it with --schema1-bundle, or this part is skipped.
set -euo pipefail

ITEMS=1000000
RUNS=3
OUT=target/bench/migrations
SCHEMA1=
CORPUS=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --schema1-bundle) SCHEMA1=$2; shift 2 ;;
        --corpus) CORPUS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
cd "$(dirname "$0")/.."
cargo build --release --locked
BIN=$PWD/target/release/deltacache
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# compare LABEL_A LABEL_B UNIT "A figures" "B figures": the two medians and their ratio.
compare() {
    local m_a m_b
    m_a=$(tr ' ' '\n' <<< "$4" | median)
    m_b=$(tr ' ' '\n' <<< "$5" | median)
    echo "median: $1 ${m_a} $3, $2 ${m_b} $3, ratio $(python3 -c "print(round($m_a / $m_b, 2))")"
}

CORPUS=${CORPUS:-$OUT/items-$ITEMS.jsonl}
if [[ ! -f $CORPUS ]]; then
    python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS"
fi

# Seconds a build-base takes (the output is removed afterwards unless KEEP is set).
build_seconds() {
    local out=$1; shift
    rm -rf "$out"
    local start end
    start=$(now_ms)
    RUST_LOG=warn "$BIN" build-base "$@" --out "$out" --dataset bench > "$out.log" 2>&1
    end=$(now_ms)
    python3 -c "print(round(($end - $start) / 1000, 2))"
}

echo "## build-base, $ITEMS items: filter index (migration 0002) vs none"
with=(); without=()
for run in $(seq 1 "$RUNS"); do
    with+=("$(build_seconds "$OUT/bundle-filter" --input "$CORPUS")")
    without+=("$(build_seconds "$OUT/bundle-nofilter" --input "$CORPUS" --filter-fields "")")
    echo "run $run: with index ${with[-1]} s, without ${without[-1]} s"
done
compare with without s "${with[*]}" "${without[*]}"

PLAIN=$OUT/plain-$ITEMS
if python3 -c 'import plyvel' 2>/dev/null; then
    if [[ ! -f $PLAIN/CURRENT ]]; then
        rm -rf "$PLAIN"
        python3 - "$CORPUS" "$PLAIN" <<'PY'
import json, sys
import plyvel
corpus, path = sys.argv[1], sys.argv[2]
db = plyvel.DB(path, create_if_missing=True, compression="snappy")
batch = db.write_batch()
n = 0
with open(corpus, encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        item = json.loads(line)
        batch.put(item["id"].encode(), line.encode())
        n += 1
        if n % 10000 == 0:
            batch.write()
            batch = db.write_batch()
batch.write()
db.compact_range()
db.close()
PY
    fi
    echo "## build-base, $ITEMS items: --from-leveldb (plain layout, C++ LevelDB) vs --input JSONL"
    adopt=(); jsonl=()
    for run in $(seq 1 "$RUNS"); do
        adopt+=("$(build_seconds "$OUT/bundle-adopted" --from-leveldb "$PLAIN")")
        jsonl+=("$(build_seconds "$OUT/bundle-jsonl" --input "$CORPUS")")
        echo "run $run: --from-leveldb ${adopt[-1]} s, --input ${jsonl[-1]} s"
    done
    compare --from-leveldb --input s "${adopt[*]}" "${jsonl[*]}"
else
    echo "## --from-leveldb skipped: pip install plyvel to write the plain LevelDB"
fi

# Milliseconds from start to /readyz answering 200, on a fresh state dir.
boot_ms() {
    local bundle=$1 state=$OUT/state-boot port pid start ready
    rm -rf "$state"
    port=$(free_port)
    start=$(now_ms)
    RUST_LOG=info "$BIN" serve --bundle "$bundle" --state-dir "$state" --listen "127.0.0.1:$port" \
        > "$OUT/boot.log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "serve exited; see $OUT/boot.log" >&2; exit 1; }
        sleep 0.02
    done
    ready=$(now_ms)
    kill -TERM "$pid"; wait "$pid" || true
    echo $(( ready - start ))
}

if [[ -n $SCHEMA1 ]]; then
    schema=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["schema_version"])' "$SCHEMA1/manifest.json")
    [[ $schema == 1 ]] || { echo "$SCHEMA1 is in db schema $schema, not 1" >&2; exit 1; }
    CURRENT_BUNDLE=$OUT/bundle-filter
    n1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["n_items"])' "$SCHEMA1/manifest.json")
    python3 - "$SCHEMA1/manifest.json" "$CORPUS" <<'PY' || { echo "$SCHEMA1 was not built from $CORPUS: pass --items to match it" >&2; exit 1; }
import hashlib, json, sys
manifest = json.load(open(sys.argv[1]))
h = hashlib.sha256()
with open(sys.argv[2], "rb") as f:
    for line in f:
        line = line.strip()
        if line:
            h.update(line + b"\n")
sys.exit(0 if h.hexdigest() == manifest["items_sha256"] else 1)
PY
    build_seconds "$CURRENT_BUNDLE" --input "$CORPUS" > /dev/null
    echo "## boot to ready, $n1 items: schema-1 bundle (migrated on clone) vs current-schema bundle"
    old=(); new=()
    for run in $(seq 1 "$RUNS"); do
        old+=("$(boot_ms "$SCHEMA1")")
        migrate=$(grep -o 'migration="0002_filter_index.rs".*seconds=[0-9.]*' "$OUT/boot.log" | grep -o 'seconds=[0-9.]*' | tail -1 | cut -d= -f2)
        new+=("$(boot_ms "$CURRENT_BUNDLE")")
        echo "run $run: schema 1 ${old[-1]} ms (migration 0002 ${migrate:-?} s), current ${new[-1]} ms"
    done
    compare "schema 1" current ms "${old[*]}" "${new[*]}"
else
    echo "## boot comparison skipped: pass --schema1-bundle DIR (a bundle in db schema 1)"
fi
