#!/usr/bin/env bash
# Reliability figures for deltacache's serving hardening; BENCHMARKS.md, "Serving hardening",
# comes from this script.
#
# Run `scripts/bench_hardening.sh --help` for what it does and its options.
set -euo pipefail
# The whole script is one brace group, so bash parses all of it before running any: editing
# this file during a run cannot change the run.
{

usage() {
    cat <<'EOF'
Usage: scripts/bench_hardening.sh [options] [PART...]

Measures how deltacache holds up against crashes, a full disk, slow and hostile clients,
version swaps under load and a long run, on a 10,000-item bundle (scripts/gen_corpus.py,
seed 42) with the release binary. PARTS (default: all of them, in this order):

  crash         SIGKILLs of `deltacache sync` and of `deltacache serve` (following a file://
                store, SIGHUP to sync) at random moments, and runs stopped at each sync
                failpoint (DELTACACHE_FAILPOINT), over a chain of deltas of 3,000 changes;
                after each, the state dir must hold exactly the old or the new version
                (`export` digest against a model folded from the changes, `status --json`),
                and a rerun of `sync` must converge to the head
  disk-full     the state dir on a small tmpfs that the clone fits in but the apply of a large
                delta does not (a different size each run); the old version must keep serving,
                /status must report the failure, nothing half-made may stay, and after a
                remount with room the next SIGHUP must converge (needs root, or unshare -rm)
  slow-clients  1,000 idle connections, 100 trickling headers and 100 trickling a body, a byte
                a second, plus 20 stalling a body, while wrk drives POST /search; /livez latency
                (new connection each probe) and /search req/s against the same run without
                them; how long the server takes to close each kind; then the same with
                --probe-listen, probing the probe port
  bad-input     a seeded campaign of malformed requests over raw sockets (methods, paths,
                headers, framing, JSON bodies): no crash, no 5xx, every 4xx in the JSON error
                shape with content-type application/json
  swaps         64 keep-alive connections on /search and /items while a delta is published to
                the followed file:// store every second (no SIGHUP: the follower watches the
                directory): no failed request, x-data-version never back within a connection;
                beside the same load without publishing
  soak          mixed load at a modest rate (search, items, batch, status, metrics) with a
                delta published every minute; RSS and open descriptors of the daemon at the
                start, every --soak-sample-minutes and at the end (run it last)

Everything is written under OUT_DIR: per part PART.md (the summary), PART.tsv (one figure a
line) and the logs; results.md concatenates the summaries of the parts run. Exits non-zero
if any check failed (the summary says which), after running every part asked for.

Options:
  --out DIR              output directory [default: target/bench/hardening]
  --kills N              landed SIGKILLs per command (sync, serve) [default: 200]
  --failpoint-rounds N   runs per failpoint and command [default: 4]
  --chain N              deltas in the crash chain [default: 6]
  --disk-runs N          disk-full runs [default: 24]
  --slow-seconds S       wrk seconds per slow-clients run [default: 20]
  --runs N               slow-clients runs per configuration (pairs) [default: 3]
  --fuzz-cases N         bad-input cases [default: 50000]
  --swap-seconds S       seconds of publishing under load [default: 60]
  --soak-minutes M       soak length [default: 30]
  --soak-sample-minutes M  RSS/fd sample interval in the soak [default: 5]
  --seed S               seed of the random choices [default: 42]
  --binary PATH          the deltacache binary to measure (no build; e.g. a release build of
                         the commit under test made elsewhere)
  --no-build             use target/release/deltacache as it is (default: cargo build --release)
  --quick                check the harness: a few kills, 3 disk runs, 6 s slow-client runs
                         with 2/1/3 s timeouts, 2,000 fuzz cases, 10 s of swaps, a 2-minute soak
  -h, --help             show this help

Every store is a TUF repository (`root init` with one key for every role, `repo init`); the
crash chain's store carries a fleet policy with --max-removed-percent 50: with the defaults a
trial removes at most 15 % of the items (seq 0 -> 6), under the health gate's default 25 %,
but a longer --chain would cross it, and the gate is not what this part measures.

Needs: python3, curl, wrk (Debian: apt-get install wrk), cargo (unless --binary), and for disk-full root or
unprivileged user namespaces (mount -t tmpfs). With the defaults, on 2 cores: crash ~25 min,
disk-full ~5 min, slow-clients ~7 min, bad-input ~1 min, swaps ~3 min, soak 30 min;
--quick ~6 min.
EOF
}

OUT_DIR=target/bench/hardening
KILLS=200
FP_ROUNDS=4
CHAIN=6
CHAIN_CHANGES=3000
DISK_RUNS=24
SLOW_SECONDS=20
RUNS=3
FUZZ_CASES=50000
SWAP_SECONDS=60
SOAK_MINUTES=30
SOAK_SAMPLE_MINUTES=5
SEED=42
BUILD=1
BINARY=""
QUICK=0
PARTS=()
# Timeouts of the slow-clients runs (stated in the summary).
HEADER_TIMEOUT=10 BODY_TIMEOUT=5 REQUEST_TIMEOUT=15
# --quick sets smaller defaults first, so that options given beside it still win.
for arg in "$@"; do
    if [[ $arg == --quick ]]; then
        QUICK=1
        KILLS=6 FP_ROUNDS=1 CHAIN=3 CHAIN_CHANGES=1000 DISK_RUNS=3 SLOW_SECONDS=6 RUNS=1
        FUZZ_CASES=2000 SWAP_SECONDS=10 SOAK_MINUTES=2 SOAK_SAMPLE_MINUTES=1
        HEADER_TIMEOUT=2 BODY_TIMEOUT=1 REQUEST_TIMEOUT=3
    fi
done
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT_DIR=${2:?--out needs a directory}; shift 2 ;;
        --kills) KILLS=${2:?--kills needs a number}; shift 2 ;;
        --failpoint-rounds) FP_ROUNDS=${2:?--failpoint-rounds needs a number}; shift 2 ;;
        --chain) CHAIN=${2:?--chain needs a number}; shift 2 ;;
        --disk-runs) DISK_RUNS=${2:?--disk-runs needs a number}; shift 2 ;;
        --slow-seconds) SLOW_SECONDS=${2:?--slow-seconds needs seconds}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --fuzz-cases) FUZZ_CASES=${2:?--fuzz-cases needs a number}; shift 2 ;;
        --swap-seconds) SWAP_SECONDS=${2:?--swap-seconds needs seconds}; shift 2 ;;
        --soak-minutes) SOAK_MINUTES=${2:?--soak-minutes needs minutes}; shift 2 ;;
        --soak-sample-minutes) SOAK_SAMPLE_MINUTES=${2:?--soak-sample-minutes needs minutes}; shift 2 ;;
        --seed) SEED=${2:?--seed needs a number}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --binary) BINARY=${2:?--binary needs a path}; BUILD=0; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        crash|disk-full|slow-clients|bad-input|swaps|soak) PARTS+=("$1"); shift ;;
        *) echo "bench_hardening.sh: unknown option or part $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ ${#PARTS[@]} -eq 0 ]]; then
    PARTS=(crash disk-full slow-clients bad-input swaps soak)
fi
for value in "$KILLS" "$FP_ROUNDS" "$CHAIN" "$DISK_RUNS" "$SLOW_SECONDS" "$RUNS" "$FUZZ_CASES" \
    "$SWAP_SECONDS" "$SOAK_MINUTES" "$SOAK_SAMPLE_MINUTES" "$SEED"; do
    [[ $value =~ ^[0-9]+$ && $value -gt 0 ]] || { echo "bench_hardening.sh: expected a positive whole number, got '$value'" >&2; exit 2; }
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
HELPER=$REPO/scripts/hardening.py

die() { echo "bench_hardening.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; $2"
}
need python3 "install Python 3"
need curl "install curl (Debian: apt-get install curl)"
need wrk "install wrk (Debian: apt-get install wrk)"
if [[ -n $BINARY ]]; then
    [[ -x $BINARY ]] || die "--binary $BINARY is not an executable file"
    BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")
elif [[ $BUILD -eq 1 ]]; then
    need cargo "install the Rust toolchain (https://rustup.rs), or pass --binary PATH"
fi

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# --- processes and mounts we start, undone on exit -------------------------------------------
BG_PIDS=()
MOUNTED=""
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
    local pid
    for pid in "${BG_PIDS[@]}"; do
        stop_pid "$pid"
    done
    BG_PIDS=()
    if [[ -n $MOUNTED ]]; then
        umount "$MOUNTED" 2>/dev/null || true
        MOUNTED=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget_pid() { # forget_pid PID: drops it from BG_PIDS (it was stopped and waited for)
    local kept=() pid
    for pid in "${BG_PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    BG_PIDS=("${kept[@]}")
}

now_ms() { date +%s%3N; }
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
json_get() { # json_get FILE EXPR: a value from a JSON file (EXPR indexes `d`)
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}

# --- results -------------------------------------------------------------------------------
FAILED=()
PART=""
PART_MD=""
PART_TSV=""
begin_part() {
    PART=$1
    PART_MD=$OUT_DIR/$PART.md
    PART_TSV=$OUT_DIR/$PART.tsv
    : >"$PART_MD"
    : >"$PART_TSV"
    PART_START=$(now_ms)
    log "== $PART"
}
record() { printf '%s\t%s\n' "$1" "$2" >>"$PART_TSV"; }
md() { printf '%s\n' "$*" >>"$PART_MD"; }
check() { # check WHAT CONDITION-EXIT-STATUS: notes a failed check
    if [[ $2 -ne 0 ]]; then
        FAILED+=("$PART: $1")
        md "- **CHECK FAILED**: $1"
        log "CHECK FAILED: $1"
    fi
}
end_part() {
    local secs=$(( ($(now_ms) - PART_START) / 1000 ))
    record seconds "$secs"
    md "- part took ${secs} s"
    md ""
    log "== $PART done in ${secs} s"
}

# --- build, corpus, bundle, key --------------------------------------------------------------
if [[ $BUILD -eq 1 ]]; then
    log "cargo build --release --locked"
    cargo build --release --locked --quiet || die "cargo build --release failed"
fi
[[ -n $BINARY ]] || BINARY=$REPO/target/release/deltacache
[[ -x $BINARY ]] || die "no release binary at $BINARY; drop --no-build or pass --binary PATH"
# A private copy, so a concurrent build cannot swap the binary in the middle of a run.
cp "$BINARY" "$OUT_DIR/deltacache.new"
mv "$OUT_DIR/deltacache.new" "$OUT_DIR/deltacache"
BIN=$OUT_DIR/deltacache
ITEMS=$OUT_DIR/items-10k.jsonl
QUERIES=$OUT_DIR/queries-10k.txt
BUNDLE=$OUT_DIR/bundle-10k
KEY=$OUT_DIR/publisher.key
ROOT_JSON=$OUT_DIR/root.json
want="n=10000 seed=42 gen=$(sha256sum scripts/gen_corpus.py | cut -c1-16) bin=$(sha256sum "$BIN" | cut -c1-16)"
if [[ ! -f $OUT_DIR/bundle.stamp || $(cat "$OUT_DIR/bundle.stamp") != "$want" ]]; then
    log "corpus and bundle of 10,000 items"
    rm -rf "$BUNDLE"
    python3 scripts/gen_corpus.py --n 10000 --seed 42 --out "$ITEMS" --queries 1000 --queries-out "$QUERIES"
    "$BIN" build-base --input "$ITEMS" --dataset items --out "$BUNDLE" >"$OUT_DIR/build-base.log" 2>&1 \
        || { cat "$OUT_DIR/build-base.log" >&2; die "build-base failed"; }
    echo "$want" >"$OUT_DIR/bundle.stamp"
fi
# One key for every role (threshold 1) and the root instances trust, made together (a key
# left by a run of the earlier format, with no root beside it, is replaced).
if [[ ! -f $ROOT_JSON ]]; then
    rm -f "$KEY" "$KEY.pub"
    "$BIN" keygen --out "$KEY" >/dev/null
    "$BIN" root init --out "$ROOT_JSON" --root-key "$KEY.pub" --targets-key "$KEY.pub" \
        --online-key "$KEY.pub" --sign-with "$KEY" >/dev/null
fi

# init_store DIR [MAX_REMOVED_PERCENT]: a TUF repository in the file:// store DIR (root 1,
# empty targets), and with a percent a fleet policy whose health gate allows that share of
# the served items removed by one sync.
init_store() {
    RUST_LOG=error "$BIN" repo init --store "file://$1" --root "$ROOT_JSON" --key "$KEY" \
        >>"$OUT_DIR/publish.log" 2>&1 || die "repo init of $1 failed (see $OUT_DIR/publish.log)"
    if [[ -n ${2:-} ]]; then
        RUST_LOG=error "$BIN" fleet set --store "file://$1" --key "$KEY" --max-removed-percent "$2" \
            >>"$OUT_DIR/publish.log" 2>&1 || die "fleet set on $1 failed (see $OUT_DIR/publish.log)"
    fi
}
# advance_store FROM TO: the file:// store TO (an earlier copy of FROM) becomes FROM, in the
# order a publisher writes: targets, then versioned metadata, then timestamp.json replaced
# by a rename (the commit point a follower watches).
advance_store() {
    local from=$1 to=$2 f
    mkdir -p "$to/targets" "$to/metadata"
    for f in "$from/targets/"*; do
        [[ -e $f ]] || continue
        [[ -e $to/targets/${f##*/} ]] || cp "$f" "$to/targets/"
    done
    for f in "$from/metadata/"*; do
        [[ ${f##*/} != timestamp.json ]] || continue
        cmp -s "$f" "$to/metadata/${f##*/}" || cp "$f" "$to/metadata/"
    done
    cp "$from/metadata/timestamp.json" "$to/metadata/.timestamp.json.new"
    mv "$to/metadata/.timestamp.json.new" "$to/metadata/timestamp.json"
}

# publish DIR CHANGES: publishes one delta to the file:// store DIR.
publish() {
    RUST_LOG=error "$BIN" publish-delta --store "file://$1" --key "$KEY" --bundle "$BUNDLE" \
        --changes "$2" >>"$OUT_DIR/publish.log" 2>&1
}

# --- serve -----------------------------------------------------------------------------------
# start_serve LOG_PREFIX ARGS...: `serve --listen 127.0.0.1:0 ARGS...` in the background; sets
# SERVE_PID, SERVE_PORT and PROBE_PORT (with --probe-listen) from the lines it prints. Does not
# wait for readiness (see wait_ready).
start_serve() {
    local prefix=$1
    shift
    SERVE_OUT=$prefix.out
    SERVE_ERR=$prefix.err
    : >"$SERVE_OUT"
    "$BIN" serve --bundle "$BUNDLE" --listen 127.0.0.1:0 "$@" >"$SERVE_OUT" 2>"$SERVE_ERR" &
    SERVE_PID=$!
    BG_PIDS+=("$SERVE_PID")
    local waited=0
    until grep -q 'listening on' "$SERVE_OUT"; do
        if ! kill -0 "$SERVE_PID" 2>/dev/null; then
            SERVE_PORT=""
            return 1
        fi
        waited=$((waited + 1))
        ((waited <= 1200)) || die "serve printed no listening line in 60 s ($SERVE_ERR)"
        sleep 0.05
    done
    SERVE_PORT=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$SERVE_OUT")
    PROBE_PORT=$(sed -n 's|.*probes on http://127.0.0.1:\([0-9]*\).*|\1|p' "$SERVE_OUT")
}
# wait_ready: until /readyz answers 200 (returns 1 if serve exits first).
wait_ready() {
    local waited=0
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVE_PORT/readyz" || true) == 200 ]]; do
        kill -0 "$SERVE_PID" 2>/dev/null || return 1
        waited=$((waited + 1))
        ((waited <= 1200)) || die "serve not ready after 120 s ($SERVE_ERR)"
        sleep 0.1
    done
}
# stop_serve: SIGTERM, then sets STOP_RC to serve's exit status.
stop_serve() {
    STOP_RC=0
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || STOP_RC=$?
    forget_pid "$SERVE_PID"
}
status_field() { # status_field EXPR: a field of this serve's /status (EXPR indexes `d`)
    curl -sf "http://127.0.0.1:$SERVE_PORT/status" \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null || echo "?"
}
data_version() { # the x-data-version of a POST /search now
    curl -s -D - -o /dev/null -X POST -H 'content-type: application/json' \
        --data '{"query_text": "replicated storage", "top_k": 3}' "http://127.0.0.1:$SERVE_PORT/search" \
        | tr -d '\r' | sed -n 's/^x-data-version: //p'
}
proc_rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
proc_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# =============================================================================================
# crash: SIGKILL and failpoints during sync
# =============================================================================================
part_crash() {
    begin_part crash
    local dir=$OUT_DIR/crash
    rm -rf "$dir"
    mkdir -p "$dir"
    local d changes=()
    log "a chain of $CHAIN deltas of $CHAIN_CHANGES changes"
    init_store "$dir/store" 50
    cp -a "$dir/store" "$dir/store-0"
    for ((d = 1; d <= CHAIN; d++)); do
        python3 "$HELPER" changes --out "$dir/changes-$d.jsonl" --delta "$d" --n "$CHAIN_CHANGES" \
            --prefix crash --seed "$SEED"
        publish "$dir/store" "$dir/changes-$d.jsonl" || die "publish-delta failed (see $OUT_DIR/publish.log)"
        cp -a "$dir/store" "$dir/store-$d"
        changes+=("$dir/changes-$d.jsonl")
    done
    python3 "$HELPER" model --corpus "$ITEMS" --changes "${changes[@]}" --out "$dir/model.json" >/dev/null
    sync_to() { # sync_to STATE STORE_DIR: one clean sync
        "$BIN" sync --bundle "$BUNDLE" --state-dir "$1" --store "file://$2" --trusted-root "$ROOT_JSON" \
            >>"$dir/sync-clean.log" 2>&1
    }
    # Reference state dirs, one per seq, each checked against the model.
    log "reference state dirs at seq 0..$CHAIN, checked against the model"
    sync_to "$dir/ref-0" "$dir/store-0" || die "sync to seq 0 failed"
    for ((d = 1; d <= CHAIN; d++)); do
        cp -a "$dir/ref-$((d - 1))" "$dir/ref-$d"
        sync_to "$dir/ref-$d" "$dir/store-$d" || die "sync to seq $d failed"
    done
    local s t digest want
    for ((d = 0; d <= CHAIN; d++)); do
        "$BIN" export --state-dir "$dir/ref-$d" --out "$dir/export.jsonl" 2>/dev/null
        digest=$(python3 "$HELPER" digest "$dir/export.jsonl" | cut -d' ' -f1)
        want=$(json_get "$dir/model.json" "d['$d']['digest']")
        [[ $digest == "$want" ]] || die "seq $d: the clean sync's export differs from the model (a defect or a harness bug)"
    done
    # Every pair s < t without a crash: a sync from the reference at s to head t must reach the
    # model's seq t (the trials below start from these same pairs).
    log "clean syncs of every pair s -> t"
    local pairs_ok=0 pairs_failed=0
    for ((s = 0; s < CHAIN; s++)); do
        for ((t = s + 1; t <= CHAIN; t++)); do
            rm -rf "$dir/pair"
            cp -a "$dir/ref-$s" "$dir/pair"
            digest=none
            if sync_to "$dir/pair" "$dir/store-$t" \
                && "$BIN" export --state-dir "$dir/pair" --out "$dir/export.jsonl" 2>/dev/null; then
                digest=$(python3 "$HELPER" digest "$dir/export.jsonl" | cut -d' ' -f1)
            fi
            if [[ $digest == "$(json_get "$dir/model.json" "d['$t']['digest']")" ]]; then
                pairs_ok=$((pairs_ok + 1))
            else
                pairs_failed=$((pairs_failed + 1))
                echo "clean sync seq $s -> $t: $(tail -1 "$dir/sync-clean.log" | cut -c1-300)" >>"$dir/anomalies.log"
            fi
        done
    done
    rm -rf "$dir/pair"
    record clean_pairs_ok "$pairs_ok"
    record clean_pairs_failed "$pairs_failed"
    # How long a clean sync takes, to spread the kills over it.
    local t0 noop_ms full_ms
    cp -a "$dir/ref-$CHAIN" "$dir/calib"
    t0=$(now_ms); sync_to "$dir/calib" "$dir/store-$CHAIN"; noop_ms=$(( $(now_ms) - t0 ))
    rm -rf "$dir/calib"; cp -a "$dir/ref-0" "$dir/calib"
    t0=$(now_ms); sync_to "$dir/calib" "$dir/store-$CHAIN"; full_ms=$(( $(now_ms) - t0 ))
    rm -rf "$dir/calib"
    log "a sync with nothing to do: $noop_ms ms; seq 0 -> $CHAIN: $full_ms ms"
    record sync_noop_ms "$noop_ms"
    record sync_full_ms "$full_ms"

    RANDOM=$SEED
    local n_old=0 n_new=0 n_other=0 converged=0 not_converged=0 staging_after_kill=0 staging_after_rerun=0
    local sync_landed=0 sync_finished_first=0 serve_landed=0 serve_died_early=0
    local fp_fired=0 fp_not_fired=0 fp_boot=0
    local state=$dir/trial live=$dir/live
    pick_pair() { # sets s < t at random
        s=$((RANDOM % CHAIN))
        t=$((s + 1 + RANDOM % (CHAIN - s)))
    }
    # How long a sync of k deltas takes: the mean of the reruns that synced k deltas from the
    # old version (measured as the trials go), else the calibration's estimate.
    local -A took_sum=() took_n=()
    window_ms() { # that estimate for s -> t, +30 %, so that some runs finish before the kill
        local k=$((t - s))
        if ((${took_n[$k]:-0} > 0)); then
            echo $(( took_sum[$k] * 13 / (took_n[$k] * 10) ))
        else
            echo $(( (noop_ms + k * (full_ms - noop_ms) / CHAIN) * 13 / 10 ))
        fi
    }
    # judge LABEL STORE_DIR: classifies the state dir (old seq s / new seq t), then reruns a
    # sync against STORE_DIR (head t) and checks it converged.
    judge() {
        local label=$1 store=$2 verdict staged
        rm -f "$dir/export.jsonl" "$dir/status.json"
        "$BIN" export --state-dir "$state" --out "$dir/export.jsonl" 2>>"$dir/judge.log" || : >"$dir/export.jsonl"
        "$BIN" status --state-dir "$state" --json >"$dir/status.json" 2>>"$dir/judge.log" || echo '{}' >"$dir/status.json"
        verdict=$(python3 "$HELPER" classify --model "$dir/model.json" --export "$dir/export.jsonl" \
            --status "$dir/status.json" --old "$s" --new "$t")
        staged=$(find "$state/staging" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        ((staged == 0)) || staging_after_kill=$((staging_after_kill + 1))
        case "$verdict" in
            old) n_old=$((n_old + 1)) ;;
            new) n_new=$((n_new + 1)) ;;
            *)
                n_other=$((n_other + 1))
                echo "$label seq $s -> $t: $verdict" >>"$dir/anomalies.log"
                [[ -d $dir/anomaly-$n_other ]] || cp -a "$state" "$dir/anomaly-$n_other"
                ;;
        esac
        echo "$label $s->$t $verdict staging=$staged" >>"$dir/trials.log"
        local was=$verdict t0 ok=0
        t0=$(now_ms)
        sync_to "$state" "$store" || ok=$?
        if [[ $was == old && $ok -eq 0 ]]; then
            took_sum[$((t - s))]=$(( ${took_sum[$((t - s))]:-0} + $(now_ms) - t0 ))
            took_n[$((t - s))]=$(( ${took_n[$((t - s))]:-0} + 1 ))
        fi
        if ((ok == 0)); then
            rm -f "$dir/export.jsonl" "$dir/status.json"
            "$BIN" export --state-dir "$state" --out "$dir/export.jsonl" 2>>"$dir/judge.log" || : >"$dir/export.jsonl"
            "$BIN" status --state-dir "$state" --json >"$dir/status.json" 2>>"$dir/judge.log" || echo '{}' >"$dir/status.json"
            verdict=$(python3 "$HELPER" classify --model "$dir/model.json" --export "$dir/export.jsonl" \
                --status "$dir/status.json" --old "$s" --new "$t")
        else
            verdict="rerun failed"
        fi
        staged=$(find "$state/staging" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        ((staged == 0)) || staging_after_rerun=$((staging_after_rerun + 1))
        if [[ $verdict == new && $staged -eq 0 ]]; then
            converged=$((converged + 1))
        else
            not_converged=$((not_converged + 1))
            echo "$label seq $s -> $t: rerun: $verdict, staging entries $staged" >>"$dir/anomalies.log"
        fi
    }
    # advance_live: the followed store moves from head s to head t, as a publisher would leave
    # it (targets first, then metadata, timestamp.json last by a rename).
    advance_live() {
        advance_store "$dir/store-$t" "$live"
    }
    prepare() { # fresh state dir at seq s, followed store at head s
        rm -rf "$state" "$live"
        cp -a "$dir/ref-$s" "$state"
        cp -a "$dir/store-$s" "$live"
    }

    log "SIGKILL of sync at random moments: $KILLS landed kills"
    local attempts=0 rc delay pid
    while ((sync_landed < KILLS)); do
        attempts=$((attempts + 1))
        ((attempts <= KILLS * 3)) || break
        pick_pair
        prepare
        delay=$((RANDOM * $(window_ms) / 32768))
        "$BIN" sync --bundle "$BUNDLE" --state-dir "$state" --store "file://$dir/store-$t" \
            --trusted-root "$ROOT_JSON" >"$dir/sync-killed.log" 2>&1 &
        pid=$!
        sleep_ms "$delay"
        kill -KILL "$pid" 2>/dev/null || true
        rc=0; wait "$pid" 2>/dev/null || rc=$?
        if ((rc == 137)); then
            sync_landed=$((sync_landed + 1))
        else
            sync_finished_first=$((sync_finished_first + 1))
        fi
        judge "sync-kill@${delay}ms(rc=$rc)" "$dir/store-$t"
        ((sync_landed % 25 != 0 || rc != 137)) || log "  $sync_landed kills; old $n_old, new $n_new, other $n_other"
    done

    log "SIGKILL of serve at random moments after a new head and SIGHUP: $KILLS kills"
    attempts=0
    while ((serve_landed < KILLS)); do
        attempts=$((attempts + 1))
        ((attempts <= KILLS * 3)) || break
        pick_pair
        prepare
        RUST_LOG=warn start_serve "$dir/serve" --state-dir "$state" --store "file://$live" \
            --trusted-root "$ROOT_JSON" --follow-interval 1h || { serve_died_early=$((serve_died_early + 1)); continue; }
        if ! wait_ready; then
            serve_died_early=$((serve_died_early + 1))
            wait "$SERVE_PID" 2>/dev/null || true
            forget_pid "$SERVE_PID"
            continue
        fi
        delay=$((RANDOM * $(window_ms) / 32768))
        advance_live
        kill -HUP "$SERVE_PID"
        sleep_ms "$delay"
        kill -KILL "$SERVE_PID" 2>/dev/null || true
        rc=0; wait "$SERVE_PID" 2>/dev/null || rc=$?
        forget_pid "$SERVE_PID"
        if ((rc == 137)); then
            serve_landed=$((serve_landed + 1))
        fi
        judge "serve-kill@${delay}ms(rc=$rc)" "$live"
        ((serve_landed % 25 != 0)) || log "  $serve_landed kills; old $n_old, new $n_new, other $n_other"
    done

    log "failpoints, $FP_ROUNDS runs each with sync and with serve"
    local fp round
    for fp in after-clone after-first-batch after-close after-fsync after-rename before-pointer-rename after-commit; do
        for ((round = 1; round <= FP_ROUNDS; round++)); do
            pick_pair
            prepare
            rc=0
            # (The braces keep bash's "Aborted" notice out of the output.)
            { DELTACACHE_FAILPOINT=$fp "$BIN" sync --bundle "$BUNDLE" --state-dir "$state" \
                --store "file://$dir/store-$t" --trusted-root "$ROOT_JSON" >"$dir/sync-fp.log" 2>&1; } 2>/dev/null || rc=$?
            if grep -q "failpoint $fp: aborting" "$dir/sync-fp.log"; then
                fp_fired=$((fp_fired + 1))
            else
                fp_not_fired=$((fp_not_fired + 1))
                echo "sync $fp seq $s -> $t: did not fire (rc $rc)" >>"$dir/anomalies.log"
            fi
            judge "sync-$fp(rc=$rc)" "$dir/store-$t"

            pick_pair
            prepare
            DELTACACHE_FAILPOINT=$fp RUST_LOG=warn start_serve "$dir/serve-fp" --state-dir "$state" \
                --store "file://$live" --trusted-root "$ROOT_JSON" --follow-interval 1h || true
            if [[ -n $SERVE_PORT ]] && wait_ready; then
                advance_live
                kill -HUP "$SERVE_PID"
                local waited=0
                while kill -0 "$SERVE_PID" 2>/dev/null && ((waited < 600)); do
                    sleep 0.1
                    waited=$((waited + 1))
                done
                kill -KILL "$SERVE_PID" 2>/dev/null || true
            else
                # It fired in the boot-time sync (before-pointer-rename guards every atomic
                # file replacement, and each sync rewrites the trusted TUF metadata): the
                # store still moves to head t, so that the rerun has somewhere to go.
                fp_boot=$((fp_boot + 1))
                echo "serve $fp seq $s -> $t: fired in the boot-time sync" >>"$dir/boot-fired.log"
                advance_live
            fi
            rc=0; wait "$SERVE_PID" 2>/dev/null || rc=$?
            forget_pid "$SERVE_PID"
            if grep -q "failpoint $fp: aborting" "$dir/serve-fp.err"; then
                fp_fired=$((fp_fired + 1))
            else
                fp_not_fired=$((fp_not_fired + 1))
                echo "serve $fp seq $s -> $t: did not fire (rc $rc)" >>"$dir/anomalies.log"
            fi
            judge "serve-$fp(rc=$rc)" "$live"
        done
    done
    rm -rf "$state" "$live"

    local total=$((n_old + n_new + n_other))
    record sync_kills_landed "$sync_landed"
    record sync_finished_before_kill "$sync_finished_first"
    record serve_kills "$serve_landed"
    record serve_died_before_ready "$serve_died_early"
    record failpoint_runs_fired "$fp_fired"
    record failpoint_runs_not_fired "$fp_not_fired"
    record failpoint_fired_at_boot "$fp_boot"
    record states_checked "$total"
    record states_old "$n_old"
    record states_new "$n_new"
    record states_other "$n_other"
    record staging_left_by_the_crash "$staging_after_kill"
    record reruns_converged "$converged"
    record reruns_not_converged "$not_converged"
    record staging_left_after_rerun "$staging_after_rerun"
    md "### crash: SIGKILL and failpoints during sync"
    md ""
    md "Chain: $CHAIN deltas of $CHAIN_CHANGES changes (70 % puts on bundle ids, 15 % deletes, the rest adds) on the"
    md "10,000-item bundle; each trial starts from a state dir at a random seq s and syncs to a random"
    md "head t > s. A clean sync takes $noop_ms ms with nothing to do and $full_ms ms for seq 0 -> $CHAIN."
    md ""
    md "| what | count |"
    md "|---|---:|"
    md "| clean syncs of every pair s -> t (no crash) that reached the model's seq t | $pairs_ok of $((pairs_ok + pairs_failed)) |"
    md "| SIGKILLs of \`sync\` that landed (exit 137) | $sync_landed |"
    md "| \`sync\` runs that finished before the kill (checked all the same) | $sync_finished_first |"
    md "| SIGKILLs of \`serve\` after a new head + SIGHUP | $serve_landed |"
    md "| failpoint runs that fired (sync and serve; $FP_ROUNDS each per failpoint) | $fp_fired |"
    md "| ... of which \`serve\` runs where it fired in the boot-time sync, before the new head (the store advanced for the rerun all the same) | $fp_boot |"
    md "| failpoint runs that did not fire | $fp_not_fired |"
    md "| state dirs checked | $total |"
    md "| ... holding the old version | $n_old |"
    md "| ... holding the new version | $n_new |"
    md "| ... **anything else** | **$n_other** |"
    md "| state dirs with a leftover in \`staging/\` right after the crash (cleared by the next run) | $staging_after_kill |"
    md "| reruns of \`sync\` that converged to the head (export = model, \`staging/\` empty) | $converged of $((converged + not_converged)) |"
    md ""
    check "clean syncs that did not reach the head: $pairs_failed (see $dir/anomalies.log)" "$((pairs_failed > 0))"
    check "state dirs holding neither the old nor the new version: $n_other (see $dir/anomalies.log)" "$((n_other > 0))"
    check "reruns that did not converge: $not_converged (see $dir/anomalies.log)" "$((not_converged > 0))"
    check "fewer landed kills than asked (sync $sync_landed, serve $serve_landed of $KILLS)" \
        "$((sync_landed < KILLS || serve_landed < KILLS))"
    check "failpoint runs that did not fire: $fp_not_fired (see $dir/anomalies.log)" "$((fp_not_fired > 0))"
    end_part
}

# =============================================================================================
# disk-full: the state dir's filesystem fills up mid-apply
# =============================================================================================
part_disk_full() {
    begin_part disk-full
    local dir=$OUT_DIR/disk-full
    rm -rf "$dir"
    mkdir -p "$dir/mnt"
    local mnt=$dir/mnt
    if [[ $(id -u) -ne 0 ]]; then
        # Unprivileged: run this part again inside a user and mount namespace.
        if [[ -z ${HARDENING_IN_NAMESPACE:-} ]]; then
            log "not root: running disk-full inside unshare -rm"
            local quick=()
            [[ $QUICK -eq 0 ]] || quick=(--quick)
            HARDENING_IN_NAMESPACE=1 unshare -rm "$0" --no-build --out "$OUT_DIR" --seed "$SEED" \
                --disk-runs "$DISK_RUNS" "${quick[@]}" disk-full || FAILED+=("disk-full: see $OUT_DIR/disk-full.md")
            return
        fi
    fi
    # A large delta: every bundle item rewritten with a longer text, and as many added.
    local big=$dir/big-store
    init_store "$dir/big-store-0"
    cp -a "$dir/big-store-0" "$big"
    python3 "$HELPER" changes --out "$dir/big.jsonl" --delta 1 --n 20000 --prefix big --no-deletes \
        --text-words 60 --seed "$SEED"
    publish "$big" "$dir/big.jsonl" || die "publish-delta of the large delta failed"
    local big_delta_kb
    big_delta_kb=$(du -sk "$big/targets" | cut -f1)

    mount_tmpfs() { # mount_tmpfs SIZE_KB
        mount -t tmpfs -o "size=${1}k" tmpfs "$mnt"
        MOUNTED=$mnt
    }
    unmount() { umount "$mnt"; MOUNTED=""; }
    used_kb() { df -k --output=used "$mnt" | tail -1 | tr -d ' '; }
    # serve_on_tmpfs: serve with the state dir on the tmpfs, following a store with no delta.
    serve_on_tmpfs() {
        rm -rf "$dir/live"
        cp -a "$dir/big-store-0" "$dir/live"
        RUST_LOG=info start_serve "$dir/serve" --state-dir "$mnt/state" --store "file://$dir/live" \
            --trusted-root "$ROOT_JSON" --follow-interval 1h --status-detail true
    }
    publish_big() {
        advance_store "$big" "$dir/live"
        kill -HUP "$SERVE_PID"
    }

    # start_sampler NAME: samples the tmpfs's use every 2 ms until NAME.stop exists, then
    # writes the peak (kB) to NAME; returns once sampling has begun.
    start_sampler() {
        rm -f "$1" "$1.stop" "$1.started"
        python3 - "$mnt" "$1" <<'EOF' &
import os, sys, time
mnt, out = sys.argv[1], sys.argv[2]
peak = 0
open(out + ".started", "w").close()
while not os.path.exists(out + ".stop"):
    st = os.statvfs(mnt)
    peak = max(peak, (st.f_blocks - st.f_bfree) * st.f_frsize // 1024)
    time.sleep(0.002)
open(out, "w").write(str(peak))
EOF
        SAMPLER=$!
        BG_PIDS+=("$SAMPLER")
        until [[ -f $1.started ]]; do sleep 0.01; done
    }
    stop_sampler() { # stop_sampler NAME: prints the peak
        touch "$1.stop"
        wait "$SAMPLER"
        forget_pid "$SAMPLER"
        cat "$1"
    }

    log "calibration on a 1 GiB tmpfs: what the clone and the apply need"
    mount_tmpfs 1048576
    start_sampler "$dir/peak-boot"
    serve_on_tmpfs || die "serve did not start (see $dir/serve.err)"
    wait_ready || die "serve did not become ready on the tmpfs (see $dir/serve.err)"
    local boot_peak ready_used apply_peak
    stop_sampler "$dir/peak-boot" >/dev/null
    boot_peak=$(cat "$dir/peak-boot")
    ready_used=$(used_kb)
    start_sampler "$dir/peak-apply"
    publish_big
    local waited=0
    until [[ $(status_field "d['seq']") == 1 ]]; do
        waited=$((waited + 1))
        ((waited <= 600)) || die "calibration: the large delta was not applied in 60 s"
        sleep 0.1
    done
    stop_sampler "$dir/peak-apply" >/dev/null
    apply_peak=$(cat "$dir/peak-apply")
    local after_used
    after_used=$(used_kb)
    stop_serve
    ((STOP_RC == 0)) || log "calibration serve exited $STOP_RC"
    unmount
    log "boot peak ${boot_peak} kB, ready ${ready_used} kB, apply peak ${apply_peak} kB, after ${after_used} kB"
    record boot_peak_kb "$boot_peak"
    record ready_used_kb "$ready_used"
    record apply_peak_kb "$apply_peak"
    # Sizes from just above the boot's peak to just below the apply's, spread over the runs.
    local low=$((boot_peak + 256)) high=$((apply_peak - 256))
    ((high > low)) || die "the large delta needs no more room than the boot ($boot_peak vs $apply_peak kB)"

    local want_digest
    python3 "$HELPER" model --corpus "$ITEMS" --changes "$dir/big.jsonl" --out "$dir/model.json" >/dev/null
    want_digest=$(json_get "$dir/model.json" "d['1']['digest']")
    local run size served_ok=0 failure_reported=0 old_kept=0 leftovers=0 converged=0 clean_exit=0 runs=0
    local before_commit=0 after_commit=0
    local steps=$dir/steps.log
    : >"$steps"
    for ((run = 0; run < DISK_RUNS; run++)); do
        size=$((low + (high - low) * (2 * run + 1) / (2 * DISK_RUNS)))
        runs=$((runs + 1))
        mount_tmpfs "$size"
        if ! serve_on_tmpfs || ! wait_ready; then
            log "  run $run (${size} kB): serve did not become ready (the clone did not fit?)"
            echo "run $run size $size: serve not ready" >>"$dir/anomalies.log"
            stop_pid "$SERVE_PID"; forget_pid "$SERVE_PID"; unmount
            continue
        fi
        # Searches on new connections throughout, each recording its status and version.
        rm -f "$dir/probe.stop"
        python3 "$HELPER" probe --port "$SERVE_PORT" --search "replicated storage latency" \
            --duration 300 --interval 0.05 --stop-file "$dir/probe.stop" --out "$dir/probe-$run.json" >/dev/null &
        local prober=$!
        BG_PIDS+=("$prober")
        sleep 0.3
        publish_big
        local result="" waited=0
        while ((waited < 600)); do
            result=$(status_field "d['sync']['last_result']")
            if [[ $result == failed || $(status_field "d['seq']") == 1 ]]; then
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        local last_error stale seq_now
        last_error=$(status_field "d['sync'].get('last_error')")
        stale=$(status_field "d['sync']['stale']")
        seq_now=$(status_field "d['seq']")
        # Give the failed attempt a moment to finish removing its staging directory.
        sleep 0.5
        local staged readers scratch versions current_seq where
        staged=$(find "$mnt/state/staging" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        readers=$(find "$mnt/state/readers" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        scratch=$(find "$mnt/state/scratch" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        "$BIN" status --state-dir "$mnt/state" --json >"$dir/status-$run.json" 2>/dev/null || echo '{}' >"$dir/status-$run.json"
        versions=$(json_get "$dir/status-$run.json" "len(d.get('versions', []))")
        current_seq=$(json_get "$dir/status-$run.json" "([v[1] for v in d.get('versions', []) if v[0] == d.get('current')] + [None])[0]")
        touch "$dir/probe.stop"; wait "$prober" || true; forget_pid "$prober"
        local probe_ok
        probe_ok=$(json_get "$dir/probe-$run.json" \
            "int(d['n'] > 0 and not d['errors'] and list(d['statuses']) == ['200'] and list(d['versions']) == ['0'])")
        echo "run $run size ${size}k: result=$result stale=$stale seq=$seq_now staging=$staged readers=$readers scratch=$scratch versions=$versions current_seq=$current_seq probe_ok=$probe_ok error=$last_error" >>"$dir/runs.log"
        if [[ $result == failed && $stale == True && $last_error == *"No space left"* ]]; then
            failure_reported=$((failure_reported + 1))
            # What failed, with version names and paths made generic.
            python3 -c 'import re,sys; e=sys.argv[1]; e=re.sub(r"\d{12}-[0-9a-f]+-\d+-\d+(-[0-9a-f]+-\d+-\d+)?", "V", e); e=re.sub(r"/\S*/(\S+)", r".../\1", e); print(e)' "$last_error" >>"$steps"
        else
            echo "run $run size $size: no failure reported (result $result, stale $stale, error $last_error)" >>"$dir/anomalies.log"
        fi
        if [[ $probe_ok == 1 ]]; then served_ok=$((served_ok + 1)); fi
        if [[ $seq_now == 0 ]]; then old_kept=$((old_kept + 1)); fi
        # Before the commit point: one version, current. After it (the version committed, its
        # read handles not openable for lack of room; README: "committed but cannot be
        # opened"): two versions, `current` naming the new one, the old one still served.
        if [[ $versions == 1 && $current_seq == 0 ]]; then
            where=before
            before_commit=$((before_commit + 1))
        elif [[ $versions == 2 && $current_seq == 1 && $last_error == *"committed but could not be opened"* ]]; then
            where=after
            after_commit=$((after_commit + 1))
        else
            where=other
        fi
        if [[ $where == other ]] || ((staged != 0 || readers != 1 || scratch != 0)); then
            leftovers=$((leftovers + 1))
            echo "run $run size $size: $where the commit point; staging $staged, readers $readers, scratch $scratch, versions $versions, current seq $current_seq" >>"$dir/anomalies.log"
            ls -laR "$mnt/state" >>"$dir/anomalies.log" 2>&1
        fi
        # Room again: the next SIGHUP must converge.
        mount -o "remount,size=1048576k" "$mnt"
        kill -HUP "$SERVE_PID"
        waited=0
        until [[ $(status_field "d['seq']") == 1 && $(status_field "d['sync']['stale']") == False ]]; do
            waited=$((waited + 1))
            ((waited <= 600)) || break
            sleep 0.1
        done
        local exported=none
        if "$BIN" export --state-dir "$mnt/state" --out "$dir/export.jsonl" 2>/dev/null; then
            exported=$(python3 "$HELPER" digest "$dir/export.jsonl" | cut -d' ' -f1)
        fi
        if [[ $(status_field "d['seq']") == 1 && $(data_version) == 1 && $exported == "$want_digest" ]]; then
            converged=$((converged + 1))
        else
            echo "run $run size $size: did not converge after the remount" >>"$dir/anomalies.log"
        fi
        stop_serve
        if ((STOP_RC == 0)); then clean_exit=$((clean_exit + 1)); fi
        if grep -q 'panicked' "$SERVE_ERR"; then echo "run $run: panic in the log" >>"$dir/anomalies.log"; fi
        unmount
        log "  run $((run + 1))/$DISK_RUNS (${size} kB): $result; ${last_error:0:100}"
    done
    record runs "$runs"
    record failures_reported "$failure_reported"
    record old_version_served_throughout "$served_ok"
    record failed_before_commit "$before_commit"
    record committed_not_opened "$after_commit"
    record leftovers "$leftovers"
    record converged_after_remount "$converged"
    record exit_0_on_sigterm "$clean_exit"
    md "### disk-full: the state dir's filesystem fills up mid-apply"
    md ""
    md "The state dir on a tmpfs, the bundle on disk (so the clone copies: no hard links across"
    md "filesystems). A first run on a 1 GiB tmpfs measured the room needed: ${boot_peak} kB at the"
    md "boot's peak, ${ready_used} kB once ready, ${apply_peak} kB at the peak of applying the large"
    md "delta (20,000 puts with ~60 more words of text each, 70 % on random bundle ids, 30 % new; ${big_delta_kb} kB"
    md "signed). Each run: a tmpfs of a size spread evenly from ${low} to ${high} kB, \`serve\`"
    md "(bundle served, seq 0), the delta published and SIGHUP, searches on new connections every"
    md "50 ms throughout; then \`mount -o remount,size=1G\` and SIGHUP again."
    md ""
    md "| what | count |"
    md "|---|---:|"
    md "| runs | $runs |"
    md "| failures reported (\`/status\`: \`last_result\` failed, \`stale\` true, \`last_error\` with \"No space left\") | $failure_reported |"
    md "| runs where every search answered 200 from seq 0 until the failure was reported | $served_ok |"
    md "| runs still serving seq 0 after the failure | $old_kept |"
    md "| ... the apply failed before the commit point (one version, \`current\` the old one) | $before_commit |"
    md "| ... the version was committed but its read handles could not be opened (two versions, \`current\` the new one, the old one served) | $after_commit |"
    md "| runs with a leftover (an entry in \`staging/\` or \`scratch/\`, a reader clone other than the served version's, or any other state) | $leftovers |"
    md "| runs that converged to seq 1 on the SIGHUP after the remount (\`/status\`, \`x-data-version\`, and the export equal to the model) | $converged |"
    md "| exits with status 0 on SIGTERM | $clean_exit |"
    md ""
    md "The failures (\`last_error\`, version names shown as V and directories elided):"
    md ""
    sort "$steps" | uniq -c | sort -rn | while read -r n step; do md "- $n × $step"; done
    md ""
    check "runs without the failure reported: $((runs - failure_reported))" "$((failure_reported < runs))"
    check "runs where a search failed or changed version before the failure was reported: $((runs - served_ok))" "$((served_ok < runs))"
    check "runs with a leftover: $leftovers (see $dir/anomalies.log)" "$((leftovers > 0))"
    check "runs that did not converge after the remount: $((runs - converged))" "$((converged < runs))"
    check "runs whose serve did not exit 0 on SIGTERM: $((runs - clean_exit))" "$((clean_exit < runs))"
    end_part
}

# =============================================================================================
# slow-clients
# =============================================================================================
part_slow_clients() {
    begin_part slow-clients
    local dir=$OUT_DIR/slow-clients
    rm -rf "$dir"
    mkdir -p "$dir"
    local limits=(--header-read-timeout "${HEADER_TIMEOUT}s" --body-read-timeout "${BODY_TIMEOUT}s"
        --request-timeout "${REQUEST_TIMEOUT}s" --max-connections 2048 --search-queue 64)
    local idle=1000 headers=100 bodies=100 stalls=20
    if [[ $QUICK -eq 1 ]]; then idle=100 headers=10 bodies=10 stalls=5; fi
    # Long enough for the first sockets of every kind to reach their timeout.
    local hold=$((SLOW_SECONDS + REQUEST_TIMEOUT + 5))
    # one_run CONFIG RUN WITH_SLOW PROBE_PORT: wrk on /search, a /livez probe on PROBE_PORT,
    # with or without the slow clients; writes $dir/CONFIG-RUN-{slow,base}.*
    one_run() {
        local config=$1 run=$2 with_slow=$3 probe_port=$4 name holder=""
        name=$dir/$config-$run-$([[ $with_slow == 1 ]] && echo slow || echo base)
        if [[ $with_slow == 1 ]]; then
            python3 "$HELPER" slow --port "$SERVE_PORT" --idle "$idle" --header-trickle "$headers" \
                --body-trickle "$bodies" --body-stall "$stalls" --duration "$hold" --out "$name.holder.json" >/dev/null &
            holder=$!
            BG_PIDS+=("$holder")
            sleep 3
        fi
        python3 "$HELPER" probe --port "$probe_port" --path /livez --duration "$((SLOW_SECONDS + 1))" \
            --interval 0.05 --out "$name.probe.json" >/dev/null &
        local prober=$!
        BG_PIDS+=("$prober")
        wrk -t2 -c32 -d"${SLOW_SECONDS}s" --timeout 5s -s scripts/wrk_search.lua \
            "http://127.0.0.1:$SERVE_PORT" -- "$QUERIES" 10 >"$name.wrk" 2>&1 || true
        wait "$prober" || true; forget_pid "$prober"
        if [[ -n $holder ]]; then
            log "    waiting ${hold} s in all for the slow sockets' closes"
            wait "$holder" || true; forget_pid "$holder"
        fi
        local rps p50 p99 non2xx
        rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' "$name.wrk")
        non2xx=$(sed -n 's/.*status_errors=\([0-9]*\).*/\1/p' "$name.wrk")
        p50=$(json_get "$name.probe.json" "round(d['p50_ms'], 3)")
        p99=$(json_get "$name.probe.json" "round(d['p99_ms'], 3)")
        log "    $config run $run $([[ $with_slow == 1 ]] && echo "with" || echo "without") slow clients: /search ${rps} req/s (non-2xx ${non2xx}), /livez p50 ${p50} ms p99 ${p99} ms"
        echo "$config $run $with_slow $rps $p50 $p99 $non2xx $(json_get "$name.probe.json" "d['n']") $(json_get "$name.probe.json" "sum(d['errors'].values())")" >>"$dir/runs.tsv"
    }
    : >"$dir/runs.tsv"
    local config run
    for config in main probe-port; do
        rm -rf "$dir/state"
        if [[ $config == main ]]; then
            RUST_LOG=warn start_serve "$dir/serve-$config" --state-dir "$dir/state" "${limits[@]}" || die "serve did not start"
        else
            RUST_LOG=warn start_serve "$dir/serve-$config" --state-dir "$dir/state" "${limits[@]}" \
                --probe-listen 127.0.0.1:0 || die "serve did not start"
        fi
        wait_ready || die "serve not ready (see $SERVE_ERR)"
        local probe_port=$SERVE_PORT
        [[ $config == main ]] || probe_port=$PROBE_PORT
        log "  $config: serving on $SERVE_PORT, probing /livez on $probe_port"
        for ((run = 1; run <= RUNS; run++)); do
            one_run "$config" "$run" 0 "$probe_port"
            one_run "$config" "$run" 1 "$probe_port"
        done
        local rc
        stop_serve; rc=$STOP_RC
        record "exit_status_$config" "$rc"
        check "serve ($config) exited $rc on SIGTERM" "$((rc != 0))"
    done
    python3 - "$dir" "$PART_MD" "$PART_TSV" "$HEADER_TIMEOUT" "$BODY_TIMEOUT" "$REQUEST_TIMEOUT" \
        "$SLOW_SECONDS" "$idle" "$headers" "$bodies" "$stalls" <<'EOF'
import glob, json, statistics, sys
d, md_path, tsv_path, ht, bt, rt, secs, idle, headers, bodies, stalls = sys.argv[1:]
rows = [line.split() for line in open(f"{d}/runs.tsv")]
md = open(md_path, "a")
tsv = open(tsv_path, "a")
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print("### slow-clients: idle and trickling connections beside real load\n", file=md)
print(f"`serve` with `--header-read-timeout {ht}s --body-read-timeout {bt}s --request-timeout {rt}s "
      f"--max-connections 2048 --search-queue 64` (the slow sockets alone exceed the default 1024 "
      f"connections, and wrk's 32 concurrent searches the default admission of 2 running + 16 queued, "
      f"which answers the rest 503 at once). Load: "
      f"`wrk -t2 -c32 -d{secs}s -s scripts/wrk_search.lua` (top 10); probe: GET /livez on a new "
      f"connection every 50 ms. Slow clients: {idle} idle connections, {headers} sending a header "
      f"a byte a second, {bodies} sending a `/search` body (Content-Length 60000) a byte a second, "
      f"{stalls} sending the start of a body and then nothing; each one the server closes is reopened. "
      "Runs alternate without / with the slow clients; medians of the runs.\n", file=md)
print("| probe on | slow clients | /search req/s (runs) | /livez p50 ms | /livez p99 ms | probes failed | non-2xx from wrk |", file=md)
print("|---|---|---|---:|---:|---:|---:|", file=md)
summary = {}
for config in ("main", "probe-port"):
    for slow in ("0", "1"):
        sel = [r for r in rows if r[0] == config and r[2] == slow]
        if not sel:
            continue
        rps = [float(r[3]) for r in sel]
        p50 = med([float(r[4]) for r in sel]); p99 = med([float(r[5]) for r in sel])
        failed = sum(int(r[8]) for r in sel); non2xx = sum(int(r[6]) for r in sel)
        summary[(config, slow)] = (med(rps), p50, p99)
        where = "main port" if config == "main" else "probe port (`--probe-listen`)"
        print(f"| {where} | {'yes' if slow == '1' else 'no'} | {med(rps):,.0f} ({', '.join(f'{x:,.0f}' for x in rps)}) "
              f"| {p50:.3f} | {p99:.3f} | {failed} | {non2xx} |", file=md)
        tag = f"{config}_{'slow' if slow == '1' else 'base'}"
        print(f"{tag}_search_rps\t{med(rps):.0f}\n{tag}_livez_p50_ms\t{p50:.3f}\n{tag}_livez_p99_ms\t{p99:.3f}\n"
              f"{tag}_probes_failed\t{failed}\n{tag}_wrk_non2xx\t{non2xx}", file=tsv)
print("", file=md)
for config in ("main", "probe-port"):
    if (config, "0") in summary and (config, "1") in summary:
        b, s = summary[(config, "0")], summary[(config, "1")]
        print(f"- {config}: /search with ÷ without slow clients {s[0] / b[0]:.2f}; /livez p50 "
              f"{s[1] / b[1]:.2f} ×, p99 {s[2] / b[2]:.2f} ×", file=md)
        print(f"{config}_rps_ratio\t{s[0] / b[0]:.3f}", file=tsv)
print("", file=md)
# Close times per kind, over every run with slow clients.
kinds = {}
for path in sorted(glob.glob(f"{d}/*-slow.holder.json")):
    h = json.load(open(path))
    for kind, k in h["kinds"].items():
        agg = kinds.setdefault(kind, {"opened": 0, "closed": 0, "p50": [], "max": [], "min": [], "answers": {},
                                      "still_open": 0, "connect_errors": 0})
        agg["opened"] += k["opened"]; agg["closed"] += k["closed_by_server"]
        agg["connect_errors"] += k["connect_errors"]
        agg["still_open"] += h["still_open_at_end"][kind]
        if k["close_after_s_p50"] is not None:
            agg["p50"].append(k["close_after_s_p50"]); agg["max"].append(k["close_after_s_max"]); agg["min"].append(k["close_after_s_min"])
        for status, n in k["answers"].items():
            agg["answers"][status] = agg["answers"].get(status, 0) + n
names = {"idle": f"idle (header timeout {ht} s)", "header_trickle": f"header a byte a second (header timeout {ht} s)",
         "body_trickle": f"body a byte a second (request timeout {rt} s)", "body_stall": f"body stalled (body timeout {bt} s)"}
print("Time from connect until the server closed the socket, every run with slow clients:\n", file=md)
print("| kind | sockets opened | closed by the server | min s | median s | max s | answer before the close | open at the end (younger than the timeout) |", file=md)
print("|---|---:|---:|---:|---:|---:|---|---:|", file=md)
for kind, a in kinds.items():
    answers = ", ".join(f"{n} × {s}" for s, n in sorted(a["answers"].items())) or "none"
    print(f"| {names[kind]} | {a['opened']} | {a['closed']} | {min(a['min']) if a['min'] else float('nan'):.2f} "
          f"| {med(a['p50']):.2f} | {max(a['max']) if a['max'] else float('nan'):.2f} | {answers} | {a['still_open']} |", file=md)
    print(f"close_{kind}_median_s\t{med(a['p50']):.2f}\nclose_{kind}_max_s\t{max(a['max']) if a['max'] else 'nan'}\n"
          f"close_{kind}_closed\t{a['closed']}\nclose_{kind}_connect_errors\t{a['connect_errors']}", file=tsv)
print("", file=md)
EOF
    local failed_probes
    failed_probes=$(awk '{s += $9} END {print s + 0}' "$dir/runs.tsv")
    check "/livez probes that failed: $failed_probes" "$((failed_probes > 0))"
    end_part
}

# =============================================================================================
# bad-input
# =============================================================================================
part_bad_input() {
    begin_part bad-input
    local dir=$OUT_DIR/bad-input
    rm -rf "$dir"
    mkdir -p "$dir"
    # Short timeouts, so the cases that never finish a request resolve quickly.
    RUST_LOG=warn start_serve "$dir/serve" --state-dir "$dir/state" --header-read-timeout 2s \
        --body-read-timeout 1s --request-timeout 3s || die "serve did not start"
    wait_ready || die "serve not ready (see $SERVE_ERR)"
    log "  $FUZZ_CASES cases against port $SERVE_PORT"
    # 16 at once: below the search pool's threads + queue (2 + 16 here), so no 503 is earned.
    python3 "$HELPER" fuzz --port "$SERVE_PORT" --cases "$FUZZ_CASES" --seed "$SEED" --concurrency 16 \
        --queries "$QUERIES" --progress --out "$dir/fuzz.json" >/dev/null
    local livez rc
    livez=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVE_PORT/livez" || true)
    stop_serve; rc=$STOP_RC
    local panics
    panics=$(grep -c 'panicked' "$SERVE_ERR" || true)
    python3 - "$dir/fuzz.json" "$PART_MD" "$PART_TSV" "$livez" "$rc" "$panics" <<'EOF'
import json, sys
path, md_path, tsv_path, livez, rc, panics = sys.argv[1:]
d = json.load(open(path))
md = open(md_path, "a"); tsv = open(tsv_path, "a")
print("### bad-input: malformed and odd requests over raw sockets\n", file=md)
print("`serve` with `--header-read-timeout 2s --body-read-timeout 1s --request-timeout 3s` (so requests "
      "that never finish resolve quickly); `scripts/hardening.py fuzz`, 16 cases at once, each on a new "
      "connection. Case kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(d["kinds"].items())) + ".\n", file=md)
print("| what | count |", file=md)
print("|---|---:|", file=md)
rows = [
    ("cases", d["cases"]),
    ("seconds", d["seconds"]),
    ("answers 5xx", d["answers_5xx"]),
    ("4xx answers without the JSON error shape or content-type application/json", d["violations"]),
    ("... of which hyper's own answers to unparseable requests (empty body, no content-type)", d["violations_empty_body_no_content_type"]),
    ("connections closed without an answer", sum(n for o, n in d["outcomes"].items() if o != "answered")),
    ("/livez after the campaign", livez),
    ("exit status on SIGTERM", rc),
    ("panics in the log", panics),
]
for what, n in rows:
    print(f"| {what} | {n} |", file=md)
    print(f"{what}\t{n}", file=tsv)
print("", file=md)
print("Statuses: " + ", ".join(f"{s} × {n}" for s, n in sorted(d["statuses"].items())) + ".", file=md)
print("Error codes: " + ", ".join(f"`{c}` × {n}" for c, n in sorted(d["error_codes"].items())) + ".", file=md)
print("Unanswered: " + ", ".join(f"{o} × {n}" for o, n in sorted(d["outcomes"].items()) if o != "answered")
      + " (by case kind: " + ", ".join(f"{k} {n}" for k, n in sorted(d["unanswered_by_kind"].items())) + ").\n", file=md)
if d["violations"]:
    print("Answers breaking the error shape, by status: "
          + ", ".join(f"{n} × {what}" for what, n in sorted(d["violations_by_what"].items()))
          + "; by case kind: " + ", ".join(f"{k} {n}" for k, n in sorted(d["violations_by_kind"].items())) + ".\n", file=md)
EOF
    local v5 violations
    v5=$(json_get "$dir/fuzz.json" "d['answers_5xx']")
    violations=$(json_get "$dir/fuzz.json" "d['violations']")
    check "5xx answers: $v5" "$((v5 > 0))"
    check "4xx answers without the JSON error shape: $violations (examples in $dir/fuzz.json)" "$((violations > 0))"
    check "/livez after the campaign answered $livez" "$([[ $livez == 200 ]]; echo $?)"
    check "serve exited $rc on SIGTERM" "$((rc != 0))"
    check "panics in the log: $panics" "$((panics > 0))"
    end_part
}

# =============================================================================================
# swaps: versions swapped under load
# =============================================================================================
part_swaps() {
    begin_part swaps
    local dir=$OUT_DIR/swaps
    rm -rf "$dir"
    mkdir -p "$dir"
    init_store "$dir/live"
    # --search-queue 64: 64 connections may all be searching at once; the default admission
    # (running + queued: 2 + 16 on 2 cores) would answer the excess 503 `overloaded`, which
    # is admission control working, not a swap failing.
    RUST_LOG=warn start_serve "$dir/serve" --state-dir "$dir/state" --store "file://$dir/live" \
        --trusted-root "$ROOT_JSON" --follow-interval 1h --search-queue 64 || die "serve did not start"
    wait_ready || die "serve not ready (see $SERVE_ERR)"
    local i
    log "  baseline: 64 connections, /search and /items, ${SWAP_SECONDS} s, no publishing"
    python3 "$HELPER" load --port "$SERVE_PORT" --conns 64 --duration "$SWAP_SECONDS" --mix search,items \
        --queries "$QUERIES" --out "$dir/base.json" >/dev/null
    # The changes files are written up front, so that the publisher's loop only publishes.
    for ((i = 1; i <= SWAP_SECONDS; i++)); do
        python3 "$HELPER" changes --out "$dir/changes-$i.jsonl" --delta "$i" --n 50 --prefix swap --no-deletes --seed "$SEED"
    done
    log "  the same with a delta published every second"
    python3 "$HELPER" load --port "$SERVE_PORT" --conns 64 --duration "$SWAP_SECONDS" --mix search,items \
        --queries "$QUERIES" --out "$dir/swaps.json" >/dev/null &
    local loader=$!
    BG_PIDS+=("$loader")
    local published=0 slow_publishes=0 start t0
    i=0
    start=$(now_ms)
    while (( $(now_ms) - start < (SWAP_SECONDS - 1) * 1000 )); do
        i=$((i + 1))
        t0=$(now_ms)
        if publish "$dir/live" "$dir/changes-$i.jsonl"; then
            published=$((published + 1))
        fi
        local spent=$(( $(now_ms) - t0 ))
        if ((spent < 1000)); then sleep_ms $((1000 - spent)); else slow_publishes=$((slow_publishes + 1)); fi
    done
    wait "$loader" || true; forget_pid "$loader"
    local waited=0
    until [[ $(status_field "d['seq']") == "$published" ]]; do
        waited=$((waited + 1))
        ((waited <= 300)) || break
        sleep 0.1
    done
    local final_seq swaps_total rc
    final_seq=$(status_field "d['seq']")
    swaps_total=$(curl -s "http://127.0.0.1:$SERVE_PORT/metrics" | awk '/^deltacache_swaps_total/ {print $2}')
    stop_serve; rc=$STOP_RC
    python3 - "$dir" "$PART_MD" "$PART_TSV" "$published" "$slow_publishes" "$final_seq" "$swaps_total" "$SWAP_SECONDS" "$rc" <<'EOF'
import json, sys
d, md_path, tsv_path, published, slow, final_seq, swaps, secs, rc = sys.argv[1:]
base = json.load(open(f"{d}/base.json")); sw = json.load(open(f"{d}/swaps.json"))
md = open(md_path, "a"); tsv = open(tsv_path, "a")
print("### swaps: a new version every second under load\n", file=md)
print(f"`serve` following a `file://` store (`--follow-interval 1h`: it reacts to the store directory "
      f"changing; no SIGHUP), with `--search-queue 64` so that 64 concurrent searches are admitted "
      f"(the default, 2 running + 16 queued on 2 cores, answers the excess 503 at once). `scripts/hardening.py load`: 64 keep-alive connections, each sending "
      f"`POST /search` (top 10) and `GET /items/{{id}}` in turn as fast as answered, {secs} s; every answer must be "
      f"200 and carry an `x-data-version` no lower than the previous one on the same connection. "
      f"Publisher: `publish-delta` of 50 puts (updates of bundle items and adds), then a pause to the "
      f"next second.\n", file=md)
print("| run | requests | req/s | p50 ms | p99 ms | failed | version went back | versions seen |", file=md)
print("|---|---:|---:|---:|---:|---:|---:|---:|", file=md)
for name, r in (("no publishing", base), ("a delta every second", sw)):
    print(f"| {name} | {r['requests']:,} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failed']} "
          f"| {r['version_regressions']} | {r['versions_seen']} ({r['min_version']}..{r['max_version']}) |", file=md)
print("", file=md)
print(f"- deltas published: {published} ({slow} publishes took over a second); the daemon ended at seq "
      f"{final_seq}, `deltacache_swaps_total` {swaps}; req/s with ÷ without publishing "
      f"{sw['rps'] / base['rps']:.2f}; exit status on SIGTERM {rc}", file=md)
for k, v in (("published", published), ("final_seq", final_seq), ("swaps_total", swaps),
             ("base_rps", base["rps"]), ("swap_rps", sw["rps"]), ("rps_ratio", round(sw["rps"] / base["rps"], 3)),
             ("failed", base["failed"] + sw["failed"]), ("version_regressions", sw["version_regressions"] + base["version_regressions"]),
             ("versions_seen", sw["versions_seen"]), ("exit_status", rc)):
    print(f"{k}\t{v}", file=tsv)
EOF
    local failed regress
    failed=$(( $(json_get "$dir/swaps.json" "d['failed']") + $(json_get "$dir/base.json" "d['failed']") ))
    regress=$(json_get "$dir/swaps.json" "d['version_regressions']")
    check "failed requests: $failed (see $dir/swaps.json)" "$((failed > 0))"
    check "x-data-version went back on a connection $regress times" "$((regress > 0))"
    check "the daemon ended at seq $final_seq, $published published" "$([[ $final_seq == "$published" ]]; echo $?)"
    check "serve exited $rc on SIGTERM" "$((rc != 0))"
    end_part
}

# =============================================================================================
# soak
# =============================================================================================
part_soak() {
    begin_part soak
    local dir=$OUT_DIR/soak
    rm -rf "$dir"
    mkdir -p "$dir"
    init_store "$dir/live"
    RUST_LOG=warn start_serve "$dir/serve" --state-dir "$dir/state" --store "file://$dir/live" \
        --trusted-root "$ROOT_JSON" --follow-interval 1h || die "serve did not start"
    wait_ready || die "serve not ready (see $SERVE_ERR)"
    local secs=$((SOAK_MINUTES * 60)) sample=$((SOAK_SAMPLE_MINUTES * 60)) rate=200
    local samples=$dir/samples.tsv
    printf 'minute\trss_kb\tfds\tthreads\tseq\n' >"$samples"
    sample_now() {
        printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$(proc_rss_kb "$SERVE_PID")" "$(proc_fds "$SERVE_PID")" \
            "$(awk '/^Threads/ {print $2}' "/proc/$SERVE_PID/status")" "$(status_field "d['seq']")" >>"$samples"
    }
    sample_now 0
    log "  ${SOAK_MINUTES} min at ${rate} req/s over 8 connections, a delta every minute"
    python3 "$HELPER" load --port "$SERVE_PORT" --conns 8 --rate "$rate" --duration "$secs" \
        --mix search,items,batch,items,search,status,items,metrics --queries "$QUERIES" --allow-404 \
        --out "$dir/load.json" >/dev/null &
    local loader=$!
    BG_PIDS+=("$loader")
    local start elapsed next_sample=$sample next_publish=60 d=0
    start=$(now_ms)
    while true; do
        elapsed=$(( ($(now_ms) - start) / 1000 ))
        ((elapsed < secs)) || break
        if ((elapsed >= next_publish)); then
            d=$((d + 1))
            python3 "$HELPER" changes --out "$dir/changes.jsonl" --delta "$d" --n 500 --prefix soak --seed "$SEED"
            publish "$dir/live" "$dir/changes.jsonl" || log "  publish $d failed"
            next_publish=$((next_publish + 60))
        fi
        if ((elapsed >= next_sample)); then
            sample_now $((elapsed / 60))
            log "  minute $((elapsed / 60)): $(tail -1 "$samples" | cut -f2-)"
            next_sample=$((next_sample + sample))
        fi
        sleep 1
    done
    wait "$loader" || true; forget_pid "$loader"
    sample_now "$SOAK_MINUTES"
    local rc
    stop_serve; rc=$STOP_RC
    python3 - "$dir" "$PART_MD" "$PART_TSV" "$SOAK_MINUTES" "$rate" "$d" "$rc" <<'EOF'
import json, sys
d, md_path, tsv_path, minutes, rate, published, rc = sys.argv[1:]
rows = [line.rstrip("\n").split("\t") for line in open(f"{d}/samples.tsv")][1:]
load = json.load(open(f"{d}/load.json"))
md = open(md_path, "a"); tsv = open(tsv_path, "a")
print(f"### soak: {minutes} minutes of mixed load with a delta every minute\n", file=md)
print(f"`scripts/hardening.py load --conns 8 --rate {rate}`: search, items, batch (20 ids), status and "
      f"metrics in the ratio 2:3:1:1:1; `publish-delta` of 500 changes (puts and deletes) every minute to "
      f"the followed `file://` store (an `/items` answer of 404 counts as answered: deltas delete items). "
      f"RSS and descriptors from `/proc/PID/status` and `/proc/PID/fd`.\n", file=md)
print("| minute | RSS MB | open fds | threads | seq |", file=md)
print("|---:|---:|---:|---:|---:|", file=md)
for m, rss, fds, threads, seq in rows:
    print(f"| {m} | {int(rss) / 1024:.1f} | {fds} | {threads} | {seq} |", file=md)
first, warm, last = rows[0], rows[1] if len(rows) > 2 else rows[0], rows[-1]
print("", file=md)
print(f"- requests {load['requests']:,} ({load['rps']:.0f}/s), failed {load['failed']}, p50 {load['p50_ms']:.2f} ms, "
      f"p99 {load['p99_ms']:.2f} ms; deltas published {published}; exit status on SIGTERM {rc}", file=md)
print(f"- growth, start → end: RSS {int(first[1]) / 1024:.1f} → {int(last[1]) / 1024:.1f} MB "
      f"({(int(last[1]) - int(first[1])) / 1024:+.1f} MB), fds {first[2]} → {last[2]} ({int(last[2]) - int(first[2]):+d}); "
      f"from minute {warm[0]} to the end: RSS {(int(last[1]) - int(warm[1])) / 1024:+.1f} MB, fds {int(last[2]) - int(warm[2]):+d}", file=md)
print("", file=md)
for k, v in (("rss_start_kb", first[1]), ("rss_end_kb", last[1]), ("fds_start", first[2]), ("fds_end", last[2]),
             ("rss_warm_kb", warm[1]), ("fds_warm", warm[2]), ("requests", load["requests"]),
             ("failed", load["failed"]), ("published", published), ("exit_status", rc)):
    print(f"{k}\t{v}", file=tsv)
EOF
    local failed
    failed=$(json_get "$dir/load.json" "d['failed']")
    check "failed requests: $failed" "$((failed > 0))"
    check "serve exited $rc on SIGTERM" "$((rc != 0))"
    end_part
}

# --- run the parts asked for -----------------------------------------------------------------
RESULTS_MD=$OUT_DIR/results.md
# The disk-full part run again inside a namespace writes its own part files only.
[[ -z ${HARDENING_IN_NAMESPACE:-} ]] || RESULTS_MD=$OUT_DIR/results-namespace.md
{
    echo "# deltacache serving hardening: results"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git describe --always --dirty 2>/dev/null || echo none); $(nproc) CPUs; load average at start $(cut -d' ' -f1 /proc/loadavg)"
    echo "- parts: ${PARTS[*]}$([[ $QUICK -eq 1 ]] && echo " (--quick)")"
    echo
} >"$RESULTS_MD"
for part in "${PARTS[@]}"; do
    case "$part" in
        crash) part_crash ;;
        disk-full) part_disk_full ;;
        slow-clients) part_slow_clients ;;
        bad-input) part_bad_input ;;
        swaps) part_swaps ;;
        soak) part_soak ;;
    esac
    cat "$OUT_DIR/$part.md" >>"$RESULTS_MD"
done
cat "$RESULTS_MD"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "checks that failed:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
log "every check passed; results in $RESULTS_MD"
exit 0
}
