#!/usr/bin/env bash
# Benchmarks deltacache end to end; the figures in BENCHMARKS.md come from this script.
#
# Run `scripts/bench.sh --help` for what it does and its options.
set -euo pipefail
# The whole script is one brace group, so bash parses all of it before running any: editing
# this file during a run cannot change the run.
{

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh [options]

Benchmarks deltacache on deterministic synthetic corpora (scripts/gen_corpus.py):

  1. generates corpora of 10,000 and 200,000 items (+ 1,000 queries of 2-6 words each);
  2. builds a bundle of each with the release binary (timed);
  3. serves each bundle (RUST_LOG=warn, a free loopback port) and measures with wrk:
       POST /search  {"query_text": <query>, "top_k": 10}, cycling through the queries;
       GET /items/{id}  with uniformly random ids;
     at concurrency 1 (-t1 -c1) and 32 (-t2 -c32), RUNS runs each, reporting the median
     run's req/s, p50 and p99;
  4. starts redis-server on a free loopback port (no persistence), loads the same item JSON
     values and runs `redis-benchmark -t get -c 32` (RUNS runs) for the /items ratio;
  5. runs the in-process stage timings (`cargo bench --bench stages`) on both bundles;
  6. builds a bundle of 1,000,000 items under /usr/bin/time -v (seconds, peak RSS).

Everything is written under OUT_DIR; the summary goes to OUT_DIR/results.md (Markdown
tables) and OUT_DIR/results.tsv (one figure a line), and is printed at the end.
wrk runs on the same machine as the server, so both share its cores.

With --compare-binary PATH, step 3 serves each bundle (built by this tree's binary) with
both binaries at once, each on its own state dir and port, and every run of /search and
/items measures this tree's binary, then the other one, back to back (A B A B ...), so both
see the same background load. The summary adds a table of each figure's median for both
binaries and their ratio (this tree's ÷ the other's). The other binary must read this
tree's bundle format and db schema; it only serves (stages and builds are this tree's).

With --peer, each corpus is also served by scripts/peer_service.py, the original design's
query path in Python (scikit-learn TfidfVectorizer fitted on the same items with the same
settings, exact cosine top-k with numpy/scipy, plyvel LevelDB for metadata, gunicorn with 2
gthread workers), and every /search run of deltacache is followed by the same run against
it; the summary adds the ratios deltacache / peer. Its Python packages are installed into a
venv at target/peer-venv the first time (pip; plyvel's wheel carries LevelDB).

Corpora (--corpora, comma-separated): 10k and 200k (gen_corpus.py's catalogue vocabulary,
bundle with build-base's defaults: English stop words removed), 10k-heavy and 200k-heavy
(gen_corpus.py --vocab heavy: far more frequent head words, 2-word queries; bundle and peer
built with --stop-words none, scikit-learn's own default).

Options:
  --out DIR        output directory [default: target/bench]
  --corpora LIST   corpora to measure, of 10k, 200k, 10k-heavy, 200k-heavy, or none
                   (with --serve-1m: the 1m figures alone) [default: 10k,200k]
  --peer           also serve each corpus with scripts/peer_service.py and measure /search
                   against it, interleaved (see above)
  --search-only    measure /search only (no /items, no redis)
  --serve-1m       after the 1,000,000-item build, serve that bundle: /search p50 and p99 at
                   c=1, req/s at c=32, and the server's peak RSS (VmHWM)
  --flame-dir DIR  with --profile, also write a CPU flame graph (SVG) of each profiled
                   /search run there (needs inferno-collapse-perf and inferno-flamegraph:
                   cargo install inferno)
  --duration SECS  seconds per wrk run [default: 10]
  --runs N         runs per configuration; the median is reported [default: 3]
  --seed S         corpus seed [default: 42]
  --redis-requests N  requests per redis-benchmark run [default: 400000]
  --wait-idle SECS before each measured run, wait up to SECS for a second in which the
                   rest of the machine uses < 0.15 cores (for shared machines) [default: 0]
  --skip-1m        skip the 1,000,000-item build
  --skip-stages    skip the in-process stage timings (cargo bench)
  --no-build       use target/release/deltacache as it is (default: cargo build --release)
  --profile        also profile the server (perf record, software clock) during one extra
                   c32 run of /search on every corpus (and of /items on 10k unless
                   --search-only; with --compare-binary, both binaries), and split its
                   CPU time into buckets with scripts/perf_buckets.py (needs perf)
  --quick          check the harness: 10,000 items only, 1 run of 2 s, no 1m build
  --compare-binary PATH  also measure this deltacache binary, interleaved (see above)
  --compare-label NAME   name of the --compare-binary figures [default: old]
  --label NAME     name of this tree's binary's figures beside them [default: new]
  -h, --help       show this help

Needs: python3, curl, wrk, redis-server, redis-cli, redis-benchmark, cargo, and
/usr/bin/time (GNU time; Debian: apt-get install time) unless --skip-1m.
With the defaults the whole run takes about 10-15 minutes on 2 cores.
EOF
}

OUT_DIR=target/bench
DURATION=10
RUNS=3
SEED=42
REDIS_REQUESTS=400000
SKIP_1M=0
WAIT_IDLE=0
SKIP_STAGES=0
BUILD=1
QUICK=0
PROFILE=0
COMPARE_BIN=""
COMPARE_LABEL=old
MAIN_LABEL=new
CORPORA=10k,200k
PEER=0
SEARCH_ONLY=0
SERVE_1M=0
FLAME_DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT_DIR=${2:?--out needs a directory}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --seed) SEED=${2:?--seed needs a number}; shift 2 ;;
        --redis-requests) REDIS_REQUESTS=${2:?--redis-requests needs a number}; shift 2 ;;
        --wait-idle) WAIT_IDLE=${2:?--wait-idle needs seconds}; shift 2 ;;
        --skip-1m) SKIP_1M=1; shift ;;
        --skip-stages) SKIP_STAGES=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --quick) QUICK=1; shift ;;
        --profile) PROFILE=1; shift ;;
        --compare-binary) COMPARE_BIN=${2:?--compare-binary needs a path}; shift 2 ;;
        --compare-label) COMPARE_LABEL=${2:?--compare-label needs a name}; shift 2 ;;
        --label) MAIN_LABEL=${2:?--label needs a name}; shift 2 ;;
        --corpora) CORPORA=${2:?--corpora needs a list}; shift 2 ;;
        --peer) PEER=1; shift ;;
        --search-only) SEARCH_ONLY=1; shift ;;
        --serve-1m) SERVE_1M=1; shift ;;
        --flame-dir) FLAME_DIR=${2:?--flame-dir needs a directory}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $QUICK -eq 1 ]]; then
    DURATION=2 RUNS=1 SKIP_1M=1 REDIS_REQUESTS=50000 CORPORA=10k
fi
CORPUS_LIST=()
[[ $CORPORA == none ]] || IFS=, read -r -a CORPUS_LIST <<<"$CORPORA"
for value in "${CORPUS_LIST[@]}"; do
    [[ $value =~ ^(10k|200k)(-heavy)?$ ]] \
        || { echo "bench.sh: --corpora takes 10k, 200k, 10k-heavy, 200k-heavy; got '$value'" >&2; exit 2; }
done
[[ $SERVE_1M -eq 0 || $SKIP_1M -eq 0 ]] || { echo "bench.sh: --serve-1m needs the 1m build (drop --skip-1m)" >&2; exit 2; }
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || { echo "bench.sh: --wait-idle expects whole seconds, got '$WAIT_IDLE'" >&2; exit 2; }
for value in "$DURATION" "$RUNS" "$SEED" "$REDIS_REQUESTS"; do
    [[ $value =~ ^[0-9]+$ && $value -gt 0 ]] || { echo "bench.sh: expected a positive whole number, got '$value'" >&2; exit 2; }
done
for value in "$COMPARE_LABEL" "$MAIN_LABEL"; do
    [[ $value =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bench.sh: a label is letters, digits, '.', '_' or '-', got '$value'" >&2; exit 2; }
done
[[ $COMPARE_LABEL != "$MAIN_LABEL" ]] || { echo "bench.sh: --label and --compare-label must differ" >&2; exit 2; }
if [[ -n $COMPARE_BIN ]]; then
    [[ -x $COMPARE_BIN ]] || { echo "bench.sh: --compare-binary $COMPARE_BIN is not an executable file" >&2; exit 2; }
    COMPARE_BIN=$(cd "$(dirname "$COMPARE_BIN")" && pwd)/$(basename "$COMPARE_BIN")
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BIN=$REPO/target/release/deltacache

die() { echo "bench.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

need() {
    local tool=$1 hint=$2
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; $hint"
}
need python3 "install Python 3 (it runs scripts/gen_corpus.py)"
need curl "install curl (Debian: apt-get install curl)"
need wrk "install wrk (Debian: apt-get install wrk)"
need redis-server "install Redis (Debian: apt-get install redis-server redis-tools)"
need redis-cli "install Redis tools (Debian: apt-get install redis-tools)"
need redis-benchmark "install Redis tools (Debian: apt-get install redis-tools)"
need cargo "install the Rust toolchain (https://rustup.rs)"
if [[ -n $FLAME_DIR ]]; then
    [[ $PROFILE -eq 1 ]] || die "--flame-dir needs --profile"
    need inferno-collapse-perf "cargo install inferno (outside the repo), or drop --flame-dir"
    need inferno-flamegraph "cargo install inferno (outside the repo), or drop --flame-dir"
    mkdir -p "$FLAME_DIR"
    FLAME_DIR=$(cd "$FLAME_DIR" && pwd)
fi
if [[ $PROFILE -eq 1 ]]; then
    need perf "install perf (Debian: apt-get install linux-perf), or drop --profile"
    perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 \
        || die "perf record is not allowed here (see /proc/sys/kernel/perf_event_paranoid), or drop --profile"
fi
if [[ $SKIP_1M -eq 0 ]]; then
    if ! { [[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1; }; then
        die "GNU time not found at /usr/bin/time (Debian: apt-get install time), or pass --skip-1m"
    fi
fi

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS_TSV=$OUT_DIR/results.tsv
RESULTS_MD=$OUT_DIR/results.md
: >"$RESULTS_TSV"

# --- processes we start, stopped on exit -----------------------------------------------
SERVER_PID=""
COMPARE_PID=""
PEER_PID=""
REDIS_PID=""
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    stop_pid "$SERVER_PID"; SERVER_PID=""
    stop_pid "$COMPARE_PID"; COMPARE_PID=""
    stop_pid "$PEER_PID"; PEER_PID=""
    stop_pid "$REDIS_PID"; REDIS_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# One figure: benchmark, corpus, configuration, metric, value.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS_TSV"; }

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# Median of the runs, by req/s: prints that run's WRK_RESULT line.
median_run() {
    python3 - "$@" <<'EOF'
import sys
rows = []
for line in sys.argv[1:]:
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    rows.append((float(fields["rps"]), line))
rows.sort()
print(rows[len(rows) // 2][1])
EOF
}
# cpu_run PIDS OUTFILE CMD...: runs CMD (output to OUTFILE) and prints, in cores (CPU-seconds
# per second of wall time), what the server PIDS (comma-separated: a process and its workers),
# CMD itself, and everything else on the machine used meanwhile: "server_cores=..
# client_cores=.. other_cores=..". Exits as CMD did.
cpu_run() {
    python3 - "$@" <<'EOF'
import os, resource, subprocess, sys, time
pids, outfile, cmd = [int(p) for p in sys.argv[1].split(",")], sys.argv[2], sys.argv[3:]
tick = os.sysconf("SC_CLK_TCK")
def proc_cpu(ps):
    total = 0
    for p in ps:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick
def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / tick  # all but idle and iowait (guest is in user)
def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
s0, m0, c0, t0 = proc_cpu(pids), machine_busy(), children_cpu(), time.monotonic()
with open(outfile, "w") as out:
    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
s1, m1, c1, t1 = proc_cpu(pids), machine_busy(), children_cpu(), time.monotonic()
wall = t1 - t0
server, client, machine = (s1 - s0) / wall, (c1 - c0) / wall, (m1 - m0) / wall
print(f"server_cores={server:.2f} client_cores={client:.2f} other_cores={max(machine - server - client, 0):.2f}")
sys.exit(rc)
EOF
}

# wait_idle: with --wait-idle SECS, waits up to SECS for a 1 s window in which the machine
# (our idle server included) uses less than 0.15 cores; logs what it saw.
wait_idle() {
    ((WAIT_IDLE > 0)) || return 0
    local seen
    seen=$(python3 - "$WAIT_IDLE" <<'EOF'
import os, sys, time
tick = os.sysconf("SC_CLK_TCK")
def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / tick
deadline = time.monotonic() + float(sys.argv[1])
while True:
    b0, t0 = busy(), time.monotonic()
    time.sleep(1)
    cores = (busy() - b0) / (time.monotonic() - t0)
    if cores < 0.15 or time.monotonic() >= deadline:
        print(f"{cores:.2f}")
        break
EOF
)
    log "  (machine busy before the run: $seen cores)"
}

field() { # field KEY LINE
    local key=$1 line=$2
    sed -n "s/.* $key=\([^ ]*\).*/\1/p" <<<"$line"
}

# --- build ---------------------------------------------------------------------------------
if [[ $BUILD -eq 1 ]]; then
    log "cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found; run 'cargo build --release' (or drop --no-build)"
# A private copy, so a concurrent `cargo build` cannot swap the binary in the middle of a run.
cp "$BIN" "$OUT_DIR/deltacache"
BIN=$OUT_DIR/deltacache
if [[ -n $COMPARE_BIN ]]; then
    cp "$COMPARE_BIN" "$OUT_DIR/deltacache-$COMPARE_LABEL"
    record meta all - compare_binary "$COMPARE_BIN"
    record meta all - compare_sha256 "$(sha256sum "$COMPARE_BIN" | cut -c1-16)"
    record meta all - main_sha256 "$(sha256sum "$BIN" | cut -c1-16)"
    record meta all - compare_label "$COMPARE_LABEL"
    record meta all - main_label "$MAIN_LABEL"
    COMPARE_BIN=$OUT_DIR/deltacache-$COMPARE_LABEL
fi

record meta all - date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
record meta all - nproc "$(nproc)"
record meta all - cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
record meta all - git_commit "$(git describe --always --dirty 2>/dev/null || echo none)"
record meta all - wrk "$(wrk --version 2>&1 | head -1 | awk '{print $2}')"
record meta all - redis "$(redis-server --version | awk '{print $3}')"
record meta all - duration_s "$DURATION"
record meta all - loadavg_start "$(cut -d' ' -f1 /proc/loadavg)"
record meta all - runs "$RUNS"

# --- corpora and bundles -------------------------------------------------------------------
# gen_corpus.py is deterministic in (--n, --seed, --queries, --vocab): reuse files made with
# the same.
gen_corpus() {
    local n=$1 items=$2 queries=$3 vocab=${4:-catalogue}
    local stamp="$items.stamp" gen_digest want
    gen_digest=$(sha256sum scripts/gen_corpus.py | cut -c1-16)
    want="n=$n seed=$SEED queries=1000 vocab=$vocab gen=$gen_digest"
    if [[ -s $items && -s $queries && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "corpus of $n items: reusing $items"
        return
    fi
    log "generating a corpus of $n items (seed $SEED, vocabulary $vocab)"
    python3 scripts/gen_corpus.py --n "$n" --seed "$SEED" --out "$items" \
        --queries 1000 --queries-out "$queries" --vocab "$vocab"
    echo "$want" >"$stamp"
}

build_bundle() {
    local label=$1 items=$2 bundle=$3 stop_words=${4:-english}
    rm -rf "$bundle"
    log "build-base $label --stop-words $stop_words -> $bundle"
    local t0 t1
    t0=$(now)
    "$BIN" build-base --input "$items" --dataset items --out "$bundle" --stop-words "$stop_words" \
        >"$OUT_DIR/build-$label.log" 2>&1 \
        || { cat "$OUT_DIR/build-$label.log" >&2; die "build-base of $label failed"; }
    t1=$(now)
    local secs
    secs=$(elapsed "$t0" "$t1")
    log "  $(tail -1 "$OUT_DIR/build-$label.log")"
    record build "$label" - seconds "$secs"
    record build "$label" - bundle_mb "$(du -sm "$bundle" | cut -f1)"
}

# --- server --------------------------------------------------------------------------------
# start_server LABEL BUNDLE [BINARY]: serves BUNDLE with BINARY (default: this tree's) on a
# fresh state dir and a free port; sets SERVER_PID and SERVER_URL.
start_server() {
    local label=$1 bundle=$2 binary=${3:-$BIN}
    local state=$OUT_DIR/state-$label port
    rm -rf "$state"
    port=$(free_port)
    log "serving $label on 127.0.0.1:$port"
    # The search queue must hold wrk's 32 connections (the default, 8 per CPU, answers the
    # rest 503 on a 2-core machine, which would count as throughput); the environment
    # variable reaches a --compare-binary too.
    DELTACACHE_SEARCH_QUEUE=${DELTACACHE_SEARCH_QUEUE:-64} RUST_LOG=warn "$binary" serve \
        --bundle "$bundle" --state-dir "$state" --listen "127.0.0.1:$port" \
        >"$OUT_DIR/serve-$label.out" 2>"$OUT_DIR/serve-$label.err" &
    SERVER_PID=$!
    SERVER_URL=http://127.0.0.1:$port
    local waited=0
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$SERVER_URL/readyz" || true) == 200 ]]; do
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT_DIR/serve-$label.err" >&2; die "serve exited early (log above)"; }
        waited=$((waited + 1))
        ((waited <= 600)) || die "serve not ready after 60 s"
        sleep 0.1
    done
    grep -q "deltacache: listening on http://127.0.0.1:$port" "$OUT_DIR/serve-$label.out" \
        || die "serve did not print its listening line"
    # Sanity: one search and one item answer as expected before measuring.
    local query
    query=$(head -1 "$QUERIES")
    curl -sf -X POST -H 'Content-Type: application/json' \
        --data "$(python3 -c 'import json,sys; print(json.dumps({"query_text": sys.argv[1], "top_k": 10}))' "$query")" \
        "$SERVER_URL/search" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["results"], "no results"' \
        || die "POST /search did not answer with results"
    curl -sf "$SERVER_URL/items/item-000001" >/dev/null || die "GET /items/item-000001 failed"
}

# --- the Python peer (scripts/peer_service.py) -------------------------------------------
PEER_PY=$REPO/target/peer-venv/bin/python
# The versions the BENCHMARKS.md figures were measured with.
PEER_PACKAGES=(scikit-learn==1.9.1 numpy==2.4.6 scipy==1.17.1 plyvel==1.5.1 gunicorn==27.0.1)
peer_venv() {
    if ! { [[ -x $PEER_PY ]] && "$PEER_PY" -c 'import sklearn, numpy, scipy, plyvel, gunicorn' 2>/dev/null; }; then
        log "installing ${PEER_PACKAGES[*]} into target/peer-venv"
        python3 -m venv "$REPO/target/peer-venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$PEER_PY" -m pip install -q "${PEER_PACKAGES[@]}" \
            || die "pip install of the peer's packages failed (plyvel without a wheel needs: apt-get install libleveldb-dev)"
    fi
    record meta all - peer_packages "$("$PEER_PY" -m pip list 2>/dev/null | awk '$1 ~ /^(scikit-learn|numpy|scipy|plyvel|gunicorn)$/ {printf "%s %s; ", $1, $2}')"
}

# start_peer LABEL ITEMS STOP_WORDS: builds the peer's model and LevelDB from ITEMS (timed)
# and serves it on a free port; sets PEER_PID and PEER_URL.
start_peer() {
    local label=$1 items=$2 stop_words=$3
    local dir=$OUT_DIR/peer-$label port t0
    t0=$(now)
    log "peer: fitting TfidfVectorizer (stop words $stop_words) and writing plyvel LevelDB, $label"
    "$PEER_PY" scripts/peer_service.py build --items "$items" --out "$dir" --stop-words "$stop_words" \
        >"$OUT_DIR/peer-build-$label.log" 2>&1 || { cat "$OUT_DIR/peer-build-$label.log" >&2; die "peer build failed"; }
    record build "$label" - peer_seconds "$(elapsed "$t0" "$(now)")"
    port=$(free_port)
    "$PEER_PY" scripts/peer_service.py serve --dir "$dir" --listen "127.0.0.1:$port" --workers 2 --threads 4 \
        >"$OUT_DIR/peer-$label.out" 2>"$OUT_DIR/peer-$label.err" &
    PEER_PID=$!
    PEER_URL=http://127.0.0.1:$port
    local waited=0
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$PEER_URL/readyz" || true) == 200 ]]; do
        kill -0 "$PEER_PID" 2>/dev/null || { cat "$OUT_DIR/peer-$label.err" >&2; die "the peer exited early (log above)"; }
        waited=$((waited + 1))
        ((waited <= 1200)) || die "the peer is not ready after 120 s"
        sleep 0.1
    done
    # Both workers load the model on their first request: warm them before measuring.
    wrk -t2 -c8 -d2s -s scripts/wrk_search.lua "$PEER_URL" -- "$QUERIES" 10 >/dev/null 2>&1 || true
    # Same answer as deltacache for the first query (top hit), or say so.
    local body ours theirs
    body=$(python3 -c 'import json,sys; print(json.dumps({"query_text": sys.argv[1], "top_k": 10}))' "$(head -1 "$QUERIES")")
    ours=$(curl -sf -X POST -H 'Content-Type: application/json' --data "$body" "$SERVER_URL/search" \
        | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)["results"]))')
    theirs=$(curl -sf -X POST -H 'Content-Type: application/json' --data "$body" "$PEER_URL/search" \
        | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)["results"]))') \
        || die "the peer's POST /search failed"
    if [[ $ours == "$theirs" ]]; then
        record peer "$label" - same_top10_first_query yes
    else
        log "  WARNING: the peer's top 10 for the first query differ from deltacache's (ties?): $theirs vs $ours"
        record peer "$label" - same_top10_first_query no
    fi
}

# peer_pids: the peer's gunicorn master and its workers, comma-separated.
peer_pids() {
    local kids
    kids=$(cat /proc/"$PEER_PID"/task/*/children 2>/dev/null | tr -s ' \n' ',' | sed 's/,$//')
    echo "$PEER_PID${kids:+,$kids}"
}

server_rss_mb() { # server_rss_mb [PID]
    awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${1:-$SERVER_PID}/status"
}

# record_median BENCH LABEL CONF LINE...: records the median run (by req/s) of the
# "WRK_RESULT key=value ..." lines, and every run's req/s.
record_median() {
    local bench=$1 label=$2 conf=$3
    shift 3
    local result metric
    result=$(median_run "$@")
    for metric in rps p50_us p99_us server_cores client_cores other_cores; do
        record "$bench" "$label" "$conf" "$metric" "$(field "$metric" "$result")"
    done
    record "$bench" "$label" "$conf" runs_rps "$(for l in "$@"; do field rps "$l"; done | paste -sd, -)"
}

# wrk_once [--compare] LABEL NAME THREADS CONNS SCRIPT ARGS...: one wrk run against the
# server (with --compare, against the --compare-binary one); prints its WRK_RESULT line with
# the CPU use appended.
wrk_once() {
    local pid=$SERVER_PID url=$SERVER_URL who=""
    if [[ $1 == --compare ]]; then
        pid=$COMPARE_PID url=$COMPARE_URL who="$COMPARE_LABEL "
        shift
    elif [[ $1 == --peer ]]; then
        pid=$(peer_pids) url=$PEER_URL who="peer "
        shift
    elif [[ -n $COMPARE_BIN ]]; then
        who="$MAIN_LABEL "
    fi
    local label=$1 name=$2 threads=$3 conns=$4 script=$5
    shift 5
    local out result cpu run_out=$OUT_DIR/wrk-run.out
    [[ -z $who ]] || label=$label-${who% }
    wait_idle
    cpu=$(cpu_run "$pid" "$run_out" \
        wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 5s -s "$script" "$url" -- "$@") \
        || { cat "$run_out" >&2; die "wrk failed"; }
    out=$(cat "$run_out")
    echo "$out" >>"$OUT_DIR/wrk-$label-$name-c$conns.log"
    echo "CPU $cpu" >>"$OUT_DIR/wrk-$label-$name-c$conns.log"
    result=$(grep '^WRK_RESULT' <<<"$out") || { echo "$out" >&2; die "wrk printed no WRK_RESULT line"; }
    result="$result $cpu"
    local errors=0 key
    for key in connect_errors read_errors write_errors status_errors timeouts; do
        errors=$((errors + $(field "$key" "$result")))
    done
    ((errors == 0)) || log "  WARNING: $errors errors: $result"
    log "  $who$name c$conns: $(field rps "$result") req/s, p50 $(field p50_us "$result") us, p99 $(field p99_us "$result") us; cores: $cpu"
    echo "$result"
}

# record_runs BENCH LABEL CONF LINE...: records every run's p50, p99 and server cores (for
# the comparison table, which takes the median of each figure on its own).
record_runs() {
    local bench=$1 label=$2 conf=$3
    shift 3
    local metric
    for metric in p50_us p99_us server_cores; do
        record "$bench" "$label" "$conf" "runs_$metric" "$(for l in "$@"; do field "$metric" "$l"; done | paste -sd, -)"
    done
}

# run_wrk LABEL NAME THREADS CONNS SCRIPT ARGS...: RUNS runs, records the median run. With
# --compare-binary, each run is followed by one against that binary's server, recorded as
# bench NAME-compare; with a peer running (PEER_PID), by one against the peer, recorded as
# bench NAME-peer.
run_wrk() {
    local label=$1 name=$2 conns=$4
    local lines=() others=() peers=() i
    for ((i = 1; i <= RUNS; i++)); do
        lines+=("$(wrk_once "$@")")
        [[ -z $COMPARE_BIN ]] || others+=("$(wrk_once --compare "$@")")
        [[ -z $PEER_PID ]] || peers+=("$(wrk_once --peer "$@")")
    done
    if [[ -n $PEER_PID ]]; then
        record_median "$name-peer" "$label" "c$conns" "${peers[@]}"
        record_runs "$name-peer" "$label" "c$conns" "${peers[@]}"
        record_runs "$name" "$label" "c$conns" "${lines[@]}"
    fi
    record_median "$name" "$label" "c$conns" "${lines[@]}"
    if [[ -n $COMPARE_BIN ]]; then
        record_runs "$name" "$label" "c$conns" "${lines[@]}"
        record_median "$name-compare" "$label" "c$conns" "${others[@]}"
        record_runs "$name-compare" "$label" "c$conns" "${others[@]}"
    fi
}

# profile_wrk [--compare] LABEL NAME SCRIPT ARGS...: one c32 run under perf record (of the
# --compare-binary's server with --compare), split into buckets; with --flame-dir, also a
# flame graph FLAME_DIR/NAME-LABEL[-COMPARE_LABEL].svg.
profile_wrk() {
    local pid=$SERVER_PID url=$SERVER_URL tag=""
    if [[ $1 == --compare ]]; then
        pid=$COMPARE_PID url=$COMPARE_URL tag=-$COMPARE_LABEL
        shift
    elif [[ -n $COMPARE_BIN ]]; then
        tag=-$MAIN_LABEL
    fi
    local label=$1 name=$2 script=$3
    shift 3
    local base=$OUT_DIR/perf-$label-$name$tag secs=$((DURATION < 8 ? DURATION : 8))
    log "  profiling $name$tag c32 for $secs s (perf record -e cpu-clock)"
    # A warm-up second, so perf sees the steady state.
    wrk -t2 -c32 -d1s --timeout 5s -s "$script" "$url" -- "$@" >/dev/null 2>&1 || true
    perf record -q -F 499 -e cpu-clock --call-graph dwarf,8192 -p "$pid" -o "$base.data" \
        -- sleep "$secs" >"$base.log" 2>&1 &
    local perf_pid=$!
    local cpu
    cpu=$(cpu_run "$pid" "$base.wrk" \
        wrk -t2 -c32 -d"$((secs + 1))s" --timeout 5s -s "$script" "$url" -- "$@") \
        || die "wrk failed while profiling"
    cat "$base.wrk" >>"$base.log"
    wait "$perf_pid" || die "perf record failed (see $base.log)"
    record profile "$label" "$name$tag" wrk_rps "$(field rps "$(grep '^WRK_RESULT' "$base.wrk")")"
    record profile "$label" "$name$tag" server_cores "$(field server_cores " $cpu")"
    perf script -i "$base.data" 2>/dev/null >"$base.txt"
    local pct bucket_name
    while IFS=$'\t' read -r pct bucket_name; do
        if [[ $pct == samples ]]; then
            record profile "$label" "$name$tag" samples "$bucket_name"
        else
            record profile "$label" "$name$tag" "$bucket_name" "$pct"
        fi
    done < <(python3 scripts/perf_buckets.py "$base.txt")
    if [[ -n $FLAME_DIR ]]; then
        inferno-collapse-perf <"$base.txt" >"$base.folded" || die "inferno-collapse-perf failed"
        inferno-flamegraph --title "deltacache POST /search, $label items, c32 ($name$tag; perf -e cpu-clock)" \
            <"$base.folded" >"$FLAME_DIR/$name-$label$tag.svg" || die "inferno-flamegraph failed"
        log "  flame graph: $FLAME_DIR/$name-$label$tag.svg"
    fi
    rm -f "$base.data" "$base.txt"
}

# --- redis -----------------------------------------------------------------------------------
# start_redis LABEL ITEMS N: redis-server on a free loopback port (no persistence), loaded with
# the corpus's item JSON under the keys redis-benchmark -t get -r N reads:
# key:000000000000 .. key:<N-1, 12 digits>. Sets REDIS_PID, REDIS_PORT, VALUE_SIZE.
start_redis() {
    local label=$1 items=$2 n=$3
    REDIS_PORT=$(free_port)
    log "redis-server on 127.0.0.1:$REDIS_PORT, loading $n values"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --protected-mode yes --logfile "$OUT_DIR/redis-$label.log" &
    REDIS_PID=$!
    local waited=0
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
        waited=$((waited + 1))
        ((waited <= 100)) || die "redis-server not answering after 10 s"
        sleep 0.1
    done
    python3 - "$items" <<'EOF' | redis-cli -p "$REDIS_PORT" --pipe >"$OUT_DIR/redis-load-$label.log"
import sys
out = sys.stdout.buffer
with open(sys.argv[1], "rb") as f:
    for i, line in enumerate(f):
        value = line.rstrip(b"\n")
        key = b"key:%012d" % i
        out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
EOF
    local dbsize
    dbsize=$(redis-cli -p "$REDIS_PORT" dbsize)
    [[ $dbsize -eq $n ]] || die "redis holds $dbsize keys, expected $n"
    VALUE_SIZE=$(( ($(wc -c <"$items") - n) / n ))  # mean item JSON size, bytes
    record redis "$label" - value_bytes "$VALUE_SIZE"
}

# redis_once LABEL N CONNS THREADS REQUESTS: one redis-benchmark GET run; prints a
# WRK_RESULT-style line (latencies in microseconds) with the CPU use appended.
redis_once() {
    local label=$1 n=$2 conns=$3 threads=$4 requests=$5
    local csv rps p50 p99 cpu run_out=$OUT_DIR/redis-run.out
    wait_idle
    # --threads matches wrk's -t; -d only sizes SET values, given for the record.
    cpu=$(cpu_run "$REDIS_PID" "$run_out" \
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t get -n "$requests" -c "$conns" \
        --threads "$threads" -d "$VALUE_SIZE" -r "$n" --csv) \
        || { cat "$run_out" >&2; die "redis-benchmark failed"; }
    csv=$(grep '^"GET"' "$run_out") || { cat "$run_out" >&2; die "redis-benchmark printed no GET line"; }
    echo "$csv $cpu" >>"$OUT_DIR/redis-$label-c$conns.csv"
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    rps=$(cut -d, -f2 <<<"$csv" | tr -d '"')
    p50=$(cut -d, -f5 <<<"$csv" | tr -d '"')
    p99=$(cut -d, -f7 <<<"$csv" | tr -d '"')
    p50=$(python3 -c "print(round(float('$p50') * 1000))")
    p99=$(python3 -c "print(round(float('$p99') * 1000))")
    log "  redis GET c$conns: $rps req/s, p50 $p50 us, p99 $p99 us; cores: $cpu"
    echo "WRK_RESULT rps=$rps p50_us=$p50 p99_us=$p99 $cpu"
}

# items_vs_redis LABEL N CONNS THREADS REDIS_REQUESTS: RUNS pairs of (wrk GET /items/{id},
# redis-benchmark GET) back to back, so both see the same background load; records the
# median run of each and the median of the pairs' req/s ratios. With --compare-binary, a
# wrk run against that binary's server comes between the two (recorded as items-compare).
items_vs_redis() {
    local label=$1 n=$2 conns=$3 threads=$4 requests=$5
    local ours=() others=() theirs=() ratios=() i a b
    for ((i = 1; i <= RUNS; i++)); do
        a=$(wrk_once "$label" items "$threads" "$conns" scripts/wrk_items.lua "$n" "$SEED")
        [[ -z $COMPARE_BIN ]] \
            || others+=("$(wrk_once --compare "$label" items "$threads" "$conns" scripts/wrk_items.lua "$n" "$SEED")")
        b=$(redis_once "$label" "$n" "$conns" "$threads" "$requests")
        ours+=("$a")
        theirs+=("$b")
        ratios+=("$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" \
            "$(field rps "$a")" "$(field rps "$b")")")
    done
    record_median items "$label" "c$conns" "${ours[@]}"
    if [[ -n $COMPARE_BIN ]]; then
        record_runs items "$label" "c$conns" "${ours[@]}"
        record_median items-compare "$label" "c$conns" "${others[@]}"
        record_runs items-compare "$label" "c$conns" "${others[@]}"
    fi
    record_median redis_get "$label" "c$conns" "${theirs[@]}"
    record items_vs_redis "$label" "c$conns" ratio_median \
        "$(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")"
    record items_vs_redis "$label" "c$conns" ratios "$(IFS=,; echo "${ratios[*]}")"
}

# --- one corpus --------------------------------------------------------------------------
# bench_corpus LABEL: LABEL is 10k, 200k, 10k-heavy or 200k-heavy.
bench_corpus() {
    local label=$1 n vocab=catalogue stop_words=english
    case ${label%-heavy} in
        10k) n=10000 ;;
        200k) n=200000 ;;
    esac
    if [[ $label == *-heavy ]]; then
        vocab=heavy stop_words=none
    fi
    ITEMS=$OUT_DIR/items-$label.jsonl
    QUERIES=$OUT_DIR/queries-$label.txt
    BUNDLE=$OUT_DIR/bundle-$label
    gen_corpus "$n" "$ITEMS" "$QUERIES" "$vocab"
    build_bundle "$label" "$ITEMS" "$BUNDLE" "$stop_words"

    if [[ -n $COMPARE_BIN ]]; then
        # The same bundle, served by the other binary on its own state dir and port.
        start_server "$label-$COMPARE_LABEL" "$BUNDLE" "$COMPARE_BIN"
        COMPARE_PID=$SERVER_PID COMPARE_URL=$SERVER_URL
        SERVER_PID=""
        record serve-compare "$label" - rss_mb_ready "$(server_rss_mb "$COMPARE_PID")"
    fi
    start_server "$label" "$BUNDLE"
    record serve "$label" - rss_mb_ready "$(server_rss_mb)"
    [[ $PEER -eq 0 ]] || start_peer "$label" "$ITEMS" "$stop_words"
    log "POST /search, $label"
    run_wrk "$label" search 1 1 scripts/wrk_search.lua "$QUERIES" 10
    run_wrk "$label" search 2 32 scripts/wrk_search.lua "$QUERIES" 10
    if [[ -n $PEER_PID ]]; then
        stop_pid "$PEER_PID"
        PEER_PID=""
    fi
    if [[ $SEARCH_ONLY -eq 0 ]]; then
        start_redis "$label" "$ITEMS" "$n"
        log "GET /items/{id} and redis GET, $label (runs interleaved)"
        items_vs_redis "$label" "$n" 1 1 $((REDIS_REQUESTS / 4))
        items_vs_redis "$label" "$n" 32 2 "$REDIS_REQUESTS"
        stop_pid "$REDIS_PID"
        REDIS_PID=""
    fi
    record serve "$label" - rss_mb_after "$(server_rss_mb)"
    if [[ $PROFILE -eq 1 ]]; then
        profile_wrk "$label" search scripts/wrk_search.lua "$QUERIES" 10
        [[ -z $COMPARE_BIN ]] || profile_wrk --compare "$label" search scripts/wrk_search.lua "$QUERIES" 10
        if [[ $label == 10k && $SEARCH_ONLY -eq 0 ]]; then
            profile_wrk "$label" items scripts/wrk_items.lua "$n" "$SEED"
        fi
    fi
    if [[ -n $COMPARE_BIN ]]; then
        record serve-compare "$label" - rss_mb_after "$(server_rss_mb "$COMPARE_PID")"
        stop_pid "$COMPARE_PID"
        COMPARE_PID=""
    fi
    stop_pid "$SERVER_PID"
    SERVER_PID=""

    if [[ $SKIP_STAGES -eq 0 ]]; then
        log "in-process stage timings, $label"
        DELTACACHE_BENCH_BUNDLE=$BUNDLE DELTACACHE_BENCH_QUERIES=$QUERIES \
            cargo bench --quiet --bench stages >"$OUT_DIR/stages-$label.md" 2>"$OUT_DIR/stages-$label.err" \
            || { cat "$OUT_DIR/stages-$label.err" >&2; die "cargo bench --bench stages failed"; }
        cat "$OUT_DIR/stages-$label.md" >&2
        local line kv
        line=$(grep '^stages:' "$OUT_DIR/stages-$label.md") || die "stages printed no summary line"
        for kv in ${line#stages: }; do
            record stages "$label" - "${kv%%=*}" "${kv#*=}"
        done
    fi
}

START=$(now)
[[ $PEER -eq 0 ]] || peer_venv
for corpus in "${CORPUS_LIST[@]}"; do
    bench_corpus "$corpus"
done

if [[ $SKIP_1M -eq 0 ]]; then
    items=$OUT_DIR/items-1m.jsonl
    gen_corpus 1000000 "$items" "$OUT_DIR/queries-1m.txt"
    rm -rf "$OUT_DIR/bundle-1m"
    log "build-base 1m under /usr/bin/time -v"
    /usr/bin/time -v "$BIN" build-base --input "$items" --dataset items --out "$OUT_DIR/bundle-1m" \
        >"$OUT_DIR/build-1m.log" 2>"$OUT_DIR/build-1m.time" \
        || { cat "$OUT_DIR/build-1m.time" >&2; die "build-base of 1m failed"; }
    log "  $(tail -1 "$OUT_DIR/build-1m.log")"
    wall=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$OUT_DIR/build-1m.time")
    secs=$(python3 -c "
import sys
parts = [float(p) for p in sys.argv[1].split(':')]
s = 0.0
for p in parts: s = s * 60 + p
print(f'{s:.2f}')" "$wall")
    record build 1m - seconds "$secs"
    record build 1m - peak_rss_mb "$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$OUT_DIR/build-1m.time")"
    record build 1m - user_s "$(awk -F': ' '/User time/ {print $2}' "$OUT_DIR/build-1m.time")"
    record build 1m - system_s "$(awk -F': ' '/System time/ {print $2}' "$OUT_DIR/build-1m.time")"
    record build 1m - bundle_mb "$(du -sm "$OUT_DIR/bundle-1m" | cut -f1)"
    record build 1m - stages "$(tail -1 "$OUT_DIR/build-1m.log" | sed -n 's/.*(\(.*\))$/\1/p')"
    if [[ $SERVE_1M -eq 1 ]]; then
        QUERIES=$OUT_DIR/queries-1m.txt
        start_server 1m "$OUT_DIR/bundle-1m"
        record serve 1m - rss_mb_ready "$(server_rss_mb)"
        log "POST /search, 1m"
        # This tree's binary alone (no --compare-binary or peer server at 1m).
        COMPARE_BIN="" run_wrk 1m search 1 1 scripts/wrk_search.lua "$QUERIES" 10
        COMPARE_BIN="" run_wrk 1m search 2 32 scripts/wrk_search.lua "$QUERIES" 10
        record serve 1m - rss_mb_after "$(server_rss_mb)"
        record serve 1m - peak_rss_mb "$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")"
        stop_pid "$SERVER_PID"
        SERVER_PID=""
    fi
fi
record meta all - loadavg_end "$(cut -d' ' -f1 /proc/loadavg)"
record meta all - total_s "$(elapsed "$START" "$(now)")"

# --- summary -------------------------------------------------------------------------------
python3 - "$RESULTS_TSV" "$OUT_DIR" >"$RESULTS_MD" <<'EOF'
import collections, pathlib, statistics, sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
out_dir = pathlib.Path(sys.argv[2])
v = collections.defaultdict(dict)
for bench, corpus, conf, metric, value in rows:
    v[(bench, corpus, conf)][metric] = value

def get(bench, corpus, conf, metric, default="-"):
    return v.get((bench, corpus, conf), {}).get(metric, default)

def num(x):
    try:
        return float(x)
    except ValueError:
        return None

def cpu_per_req(cores, rps):
    cores = num(cores)
    return "-" if cores is None or not rps else f"{cores / rps * 1e6:.0f}"

def ms(us):
    x = num(us)
    return "-" if x is None else f"{x / 1000:.3f}"

meta = v[("meta", "all", "-")]
print("# deltacache benchmark results\n")
print(f"- date: {meta.get('date')}; commit {meta.get('git_commit')}")
print(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu')}")
print(f"- wrk {meta.get('wrk')}, redis {meta.get('redis')}; {meta.get('runs')} runs of "
      f"{meta.get('duration_s')} s per configuration, median run (by req/s) shown")
print(f"- load average (1 min) at start {meta.get('loadavg_start')}, at end {meta.get('loadavg_end')}")
print(f"- total time: {meta.get('total_s')} s")
new, old = meta.get("main_label"), meta.get("compare_label")
if old:
    print(f"- compared: {new} = this tree's binary (sha256 {meta.get('main_sha256')}...), "
          f"{old} = {meta.get('compare_binary')} (sha256 {meta.get('compare_sha256')}...), "
          "runs interleaved")
print()

ALL_CORPORA = ("10k", "200k", "10k-heavy", "200k-heavy", "1m")
corpora = [c for c in ALL_CORPORA if ("build", c, "-") in v]

print("## HTTP (wrk on the same machine)\n")
print("Cores: CPU-seconds per second used during the median run by the server, by the load")
print("generator, and by everything else on the machine (noise), out of "
      f"{meta.get('nproc')}.\n")
print("Server CPU per request = server cores / req/s: what a request costs the server, which")
print("background load barely changes.\n")
print("| corpus | endpoint | concurrency | req/s | p50 ms | p99 ms | req/s of each run | cores server / client / other | server CPU µs/req |")
print("|---|---|---:|---:|---:|---:|---|---|---:|")
endpoints = [("search", "POST /search top_k=10"), ("items", "GET /items/{id}")]
if old:
    endpoints = [(bench + suffix, f"{name} [{label}]") for bench, name in endpoints
                 for suffix, label in (("", new), ("-compare", old))]
endpoints.insert(1, ("search-peer", "POST /search top_k=10 [Python peer]"))
for c in corpora:
    for bench, name in endpoints + [("redis_get", "redis GET (redis-benchmark)")]:
        for conf in ("c1", "c32"):
            if (bench, c, conf) not in v:
                continue
            rps = num(get(bench, c, conf, "rps"))
            print(f"| {c} | {name} | {conf[1:]} | {rps:,.0f} | {ms(get(bench, c, conf, 'p50_us'))} "
                  f"| {ms(get(bench, c, conf, 'p99_us'))} | {get(bench, c, conf, 'runs_rps')} "
                  f"| {get(bench, c, conf, 'server_cores')} / {get(bench, c, conf, 'client_cores')} / {get(bench, c, conf, 'other_cores')} "
                  f"| {cpu_per_req(get(bench, c, conf, 'server_cores'), rps)} |")
print()

def runs(bench, c, conf, metric):
    return [float(x) for x in get(bench, c, conf, f"runs_{metric}", "").split(",") if x]

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.3f}"

if old:
    print(f"## {new} vs {old}\n")
    print(f"The same bundle served by both binaries, each run of {new} followed by one of {old}.")
    print("Each figure is the median over its binary's runs, taken figure by figure (so p50 is")
    print(f"not the p50 of the median-req/s run); ratio = {new} / {old}. Pair ratios: req/s of")
    print(f"each run of {new} over the {old} run right after it (the spread the runs show).\n")
    print(f"| corpus | endpoint | conc. | req/s {new} | req/s {old} | ratio | p50 ms {new} | p50 ms {old} | ratio "
          f"| p99 ms {new} | p99 ms {old} | ratio | server µs/req {new} | {old} | ratio | req/s pair ratios |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in corpora:
        for bench, name in (("search", "POST /search"), ("items", "GET /items/{id}")):
            for conf in ("c1", "c32"):
                if (bench + "-compare", c, conf) not in v:
                    continue
                cells = []
                for metric in ("rps", "p50_us", "p99_us", "cpu_us"):
                    pair = []
                    for b in (bench, bench + "-compare"):
                        if metric == "cpu_us":
                            xs = [cores / rps * 1e6 for cores, rps in
                                  zip(runs(b, c, conf, "server_cores"), runs(b, c, conf, "rps"))]
                        else:
                            xs = runs(b, c, conf, metric)
                        pair.append(statistics.median(xs) if xs else None)
                    fmt = {"rps": lambda x: f"{x:,.0f}", "cpu_us": lambda x: f"{x:.0f}"}.get(
                        metric, lambda x: f"{x / 1000:.3f}")
                    cells += ["-" if x is None else fmt(x) for x in pair] + [ratio(*pair)]
                pairs = ", ".join(ratio(a, b) for a, b in
                                  zip(runs(bench, c, conf, "rps"), runs(bench + "-compare", c, conf, "rps")))
                print(f"| {c} | {name} | {conf[1:]} | " + " | ".join(cells) + f" | {pairs} |")
    print()

def med(bench, c, conf, metric):
    xs = runs(bench, c, conf, metric)
    return statistics.median(xs) if xs else None

def cpu_med(bench, c, conf):
    xs = [cores / rps * 1e6 for cores, rps in
          zip(runs(bench, c, conf, "server_cores"), runs(bench, c, conf, "rps"))]
    return statistics.median(xs) if xs else None

peer_corpora = [c for c in corpora if ("search-peer", c, "c32") in v]
if peer_corpora:
    print("## deltacache vs the Python peer (scripts/peer_service.py)\n")
    print("The same bundle's items, the same wrk request stream; each deltacache run followed by")
    print("the same run against the peer. Medians over the runs, figure by figure; ratio =")
    print("deltacache / peer for req/s, peer / deltacache for p50 and CPU (how many times better).")
    print(f"Peer: {meta.get('peer_packages', '-')}gunicorn 2 gthread workers x 4 threads.\n")
    print("| corpus | req/s c32 deltacache | peer | ratio | p50 ms c1 deltacache | peer | ratio "
          "| server µs/req c32 deltacache | peer | ratio | req/s c32 pair ratios |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in peer_corpora:
        a, b = med("search", c, "c32", "rps"), med("search-peer", c, "c32", "rps")
        pa, pb = med("search", c, "c1", "p50_us"), med("search-peer", c, "c1", "p50_us")
        ca, cb = cpu_med("search", c, "c32"), cpu_med("search-peer", c, "c32")
        pairs = ", ".join(ratio(x, y) for x, y in
                          zip(runs("search", c, "c32", "rps"), runs("search-peer", c, "c32", "rps")))
        f = lambda x, spec: "-" if x is None else format(x, spec)
        print(f"| {c} | {f(a, ',.0f')} | {f(b, ',.0f')} | {ratio(a, b)} | {f(pa and pa / 1000, '.3f')} "
              f"| {f(pb and pb / 1000, '.3f')} | {ratio(pb, pa)} | {f(ca, '.0f')} | {f(cb, '.0f')} "
              f"| {ratio(cb, ca)} | {pairs} |")
    print()

print("## Goals\n")
print("| corpus | goal | measured | met |")
print("|---|---|---:|---|")
def yes(ok):
    return "yes" if ok else "NO"
for c in corpora:
    if c == "1m":
        continue
    small = c.startswith("10k")
    cpu = cpu_per_req(get("search", c, "c32", "server_cores"), num(get("search", c, "c32", "rps")))
    goal = 40 if small else 60
    if cpu != "-":
        print(f"| {c} | /search server CPU <= {goal} µs/req (c32) | {cpu} µs | {yes(float(cpu) <= goal)} |")
    p50 = num(get("search", c, "c1", "p50_us"))
    goal = 120 if small else 150
    if p50 is not None:
        print(f"| {c} | /search c1 p50 <= {goal / 1000:.2f} ms | {p50 / 1000:.3f} ms | {yes(p50 <= goal)} |")
    if c in peer_corpora:
        r = med("search", c, "c32", "rps") / med("search-peer", c, "c32", "rps")
        goal = 50 if small else 200
        print(f"| {c} | /search c32 >= {goal} x the Python peer | {r:.1f} x | {yes(r >= goal)} |")
    r = num(get("items_vs_redis", c, "c32", "ratio_median"))
    if r is not None:
        print(f"| {c} | /items c32 >= 0.8 x redis GET | {r:.2f} x (median of run pairs "
              f"{get('items_vs_redis', c, 'c32', 'ratios')}) | {yes(r >= 0.8)} |")
print()

print("## Builds and memory\n")
rss_old = f" | serve RSS MB ready / after load, {old}" if old else ""
print(f"| corpus | build-base s | bundle MB | peak RSS MB (build) | serve RSS MB ready / after load{rss_old} |")
print("|---|---:|---:|---:|---|" + ("---|" if old else ""))
for c in ALL_CORPORA:
    if ("build", c, "-") not in v:
        continue
    rss_old = (f" | {get('serve-compare', c, '-', 'rss_mb_ready')} / "
               f"{get('serve-compare', c, '-', 'rss_mb_after')}") if old else ""
    print(f"| {c} | {get('build', c, '-', 'seconds')} | {get('build', c, '-', 'bundle_mb')} "
          f"| {get('build', c, '-', 'peak_rss_mb')} "
          f"| {get('serve', c, '-', 'rss_mb_ready')} / {get('serve', c, '-', 'rss_mb_after')}{rss_old} |")
if ("build", "1m", "-") in v:
    b = v[("build", "1m", "-")]
    print(f"\n1m build: user {b.get('user_s')} s, system {b.get('system_s')} s; stages: {b.get('stages')}")
if ("serve", "1m", "-") in v:
    print(f"\n1m serve: peak RSS (VmHWM) {get('serve', '1m', '-', 'peak_rss_mb')} MB after the /search runs")
print()

profiles = [(c, name) for (bench, c, name) in v if bench == "profile"]
for c, name in profiles:
    buckets = dict(v[("profile", c, name)])
    rps, cores = num(buckets.pop("wrk_rps", "-")), num(buckets.pop("server_cores", "-"))
    extra = f", {rps:,.0f} req/s, {cores / rps * 1e6:.0f} µs of server CPU per request" if rps and cores else ""
    print(f"## Server CPU profile, {name} at concurrency 32, {c} (perf, {buckets.pop('samples', '-')} samples{extra})\n")
    print("| share of server CPU | where |")
    print("|---:|---|")
    for bucket, pct in sorted(buckets.items(), key=lambda kv: -float(kv[1])):
        print(f"| {pct}% | {bucket} |")
    print()

for c in corpora:
    f = out_dir / f"stages-{c}.md"
    if f.exists() and ("stages", c, "-") in v:
        print(f"## In-process stages, {c} (cargo bench --bench stages)\n")
        print(f.read_text().strip())
        print()
EOF
cat "$RESULTS_MD"
log "results: $RESULTS_MD and $RESULTS_TSV"
exit 0
}
