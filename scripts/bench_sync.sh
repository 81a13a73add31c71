#!/usr/bin/env bash
# Boot-time sync and swap benchmarks (the figures in BENCHMARKS.md, "Sync").
#
#   scripts/bench_sync.sh [--items N] [--deltas D] [--changes C] [--out DIR] [--no-build]
#                         [--compare-binary PATH [--compare-label NAME] [--label NAME]]
#                         [--leveldb-bound] [--boot-only]
#
# 1. Boot to ready: an N-item bundle (default 1,000,000) plus D deltas (default 10) of C
#    changes each (default 10,000) in a file:// store; `serve` is started on a fresh state dir
#    and timed until /readyz answers 200; the stage split comes from its log.
# 2. Search throughput with a swap every second versus no swaps, measured with wrk in the
#    same run (needs wrk).
#
# With --compare-binary PATH, every run of both parts is made with this tree's binary (named
# by --label, default "new"), then with PATH (--compare-label, default "old"), interleaved,
# on the same bundle and delta store (written by this tree's binary; PATH must read them),
# each binary on its own state dir and, in part 2, its own live store. Before each part-2
# measurement the server is left to apply every delta already published. The medians of
# each figure and their ratio (this tree's / PATH's) are printed at the end.
#
# With --leveldb-bound, each boot run of this tree's binary is followed by the LevelDB bound of
# its apply (`cargo bench --bench leveldb_bound`: the same D deltas' records as plain
# rusty-leveldb write batches, one per delta, into a clone of the bundle's db) and the ratio
# apply rate / loop rate is printed (goal: >= 0.5); LEVELDB_BOUND_BIN=PATH runs that bench's
# executable as already built instead of through cargo. --boot-only skips part 2.
set -euo pipefail

ITEMS=1000000
DELTAS=10
CHANGES=10000
OUT=target/bench/sync
BUILD=1
COMPARE_BIN=
COMPARE_LABEL=old
MAIN_LABEL=new
LEVELDB_BOUND=0
BOOT_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --deltas) DELTAS=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --compare-binary) COMPARE_BIN=$2; shift 2 ;;
        --compare-label) COMPARE_LABEL=$2; shift 2 ;;
        --label) MAIN_LABEL=$2; shift 2 ;;
        --leveldb-bound) LEVELDB_BOUND=1; shift ;;
        --boot-only) BOOT_ONLY=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
if [[ -n $COMPARE_BIN ]]; then
    [[ -x $COMPARE_BIN ]] || { echo "--compare-binary $COMPARE_BIN is not an executable file" >&2; exit 2; }
    COMPARE_BIN=$(cd "$(dirname "$COMPARE_BIN")" && pwd)/$(basename "$COMPARE_BIN")
    [[ $COMPARE_LABEL != "$MAIN_LABEL" ]] || { echo "--label and --compare-label must differ" >&2; exit 2; }
fi
cd "$(dirname "$0")/.."
if [[ $BUILD == 1 ]]; then cargo build --release --locked; fi
BIN=$PWD/target/release/deltacache
[[ -x $BIN ]] || { echo "no release binary at $BIN: run without --no-build" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

CORPUS=$OUT/items-$ITEMS.jsonl
BUNDLE=$OUT/bundle-$ITEMS
if [[ ! -f $CORPUS ]]; then
    python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS"
fi
if [[ ! -d $BUNDLE ]]; then
    /usr/bin/time -v "$BIN" build-base --input "$CORPUS" --dataset items --out "$BUNDLE" 2> "$OUT/build.log" >/dev/null
fi

STORE=$OUT/store-$ITEMS-$DELTAS-$CHANGES
KEY=$OUT/publisher.key
ROOT=$OUT/root.json
if [[ ! -f $ROOT ]]; then
    rm -f "$KEY" "$KEY.pub"
    "$BIN" keygen --out "$KEY" >/dev/null
    # One key for every role: the benchmark measures syncing, not key custody.
    "$BIN" root init --out "$ROOT" --root-key "$KEY.pub" --targets-key "$KEY.pub" \
        --online-key "$KEY.pub" --sign-with "$KEY" >/dev/null
fi
# init_store DIR: a TUF repository of $ROOT in DIR (once).
init_store() {
    [[ -f $1/metadata/1.root.json ]] || "$BIN" repo init --store "file://$1" --root "$ROOT" --key "$KEY" >/dev/null
}
if [[ ! -f $STORE/done ]]; then
    rm -rf "$STORE"
    init_store "$STORE"
    for d in $(seq 1 "$DELTAS"); do
        python3 scripts/gen_changes.py --n "$CHANGES" --seed "$d" --items "$ITEMS" --tag delta > "$OUT/changes-$d.jsonl"
        RUST_LOG=error "$BIN" publish-delta --store "file://$STORE" --key "$KEY" --bundle "$BUNDLE" \
            --changes "$OUT/changes-$d.jsonl" --force > /dev/null
    done
    touch "$STORE/done"
fi

# The binaries to measure: this tree's alone (unnamed, as before), or both, named.
if [[ -n $COMPARE_BIN ]]; then
    LABELS=("$MAIN_LABEL" "$COMPARE_LABEL")
    BINS=("$BIN" "$COMPARE_BIN")
else
    LABELS=("")
    BINS=("$BIN")
fi
FIGURES=$OUT/compare.tsv
: > "$FIGURES"
# record PART LABEL METRIC VALUE: one figure for the comparison summary.
record() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$FIGURES"; }

# boot_once RUN LABEL BINARY: one boot to ready on a fresh state dir.
boot_once() {
    local run=$1 label=$2 bin=$3
    local log=$OUT/boot-$run${label:+-$label}.log
    local start ready pid verify clone stages
    STATE=$OUT/state-boot
    rm -rf "$STATE"
    PORT=$(free_port)
    start=$(now_ms)
    RUST_LOG=info "$bin" serve --bundle "$BUNDLE" --state-dir "$STATE" --listen "127.0.0.1:$PORT" \
        --store "file://$STORE" --trusted-root "$ROOT" --follow-interval 1h > "$log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "serve exited; see $log" >&2; exit 1; }
        sleep 0.02
    done
    ready=$(now_ms)
    kill -TERM "$pid"; wait "$pid" || true
    verify=$(grep -o 'verify_seconds=[0-9.]*' "$log" | head -1 | cut -d= -f2)
    clone=$(grep -o 'clone_seconds=[0-9.]*' "$log" | head -1 | cut -d= -f2)
    stages=$(grep -o 'stage_seconds=\[.*\]' "$log" | head -1)
    echo "run $run${label:+ $label}: ready in $(( ready - start )) ms; bundle digest check ${verify}s, bundle clone ${clone}s; sync $stages"
    APPLY_S=$(python3 -c 'import re, sys; m = re.search(r"\(\x22apply\x22, ([0-9.e-]+)\)", sys.argv[1]); print(m.group(1) if m else "")' "$stages")
    if [[ -n $label ]]; then
        record boot "$label" ready_ms "$(( ready - start ))"
        record boot "$label" bundle_digest_check_s "$verify"
        record boot "$label" bundle_clone_s "$clone"
        local name value
        while read -r name value; do
            record boot "$label" "${name}_s" "$value"
        done < <(python3 -c 'import re, sys; [print(n, v) for n, v in re.findall(r"\(\x22([^\x22]+)\x22, ([0-9.e-]+)\)", sys.argv[1])]' "$stages")
    fi
}

# leveldb_bound_once RUN: the plain rusty-leveldb write-batch loop over the same records, and
# apply ÷ loop for the boot run just made (APPLY_S).
leveldb_bound_once() {
    local run=$1 changes line bound
    changes=$(for d in $(seq 1 "$DELTAS"); do printf '%s,' "$OUT/changes-$d.jsonl"; done)
    line=$(DELTACACHE_BENCH_DB=$BUNDLE/db DELTACACHE_BENCH_CHANGES=${changes%,} \
        "${BOUND_CMD[@]}" 2>"$OUT/leveldb-bound.err" | grep '^leveldb_bound:') \
        || { cat "$OUT/leveldb-bound.err" >&2; echo "${BOUND_CMD[*]} failed" >&2; exit 1; }
    bound=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$line")
    echo "run $run: $line; apply ${APPLY_S}s: apply rate / loop rate = $(python3 -c "print(round($bound / $APPLY_S, 3))")"
    record bound "${MAIN_LABEL}" leveldb_loop_s "$bound"
    record bound "${MAIN_LABEL}" apply_s "$APPLY_S"
    record bound "${MAIN_LABEL}" apply_over_loop_rate "$(python3 -c "print(round($bound / $APPLY_S, 3))")"
}
if [[ -n ${LEVELDB_BOUND_BIN:-} ]]; then
    BOUND_CMD=("$LEVELDB_BOUND_BIN")
else
    BOUND_CMD=(cargo bench --quiet --locked --bench leveldb_bound)
fi
if [[ $LEVELDB_BOUND == 1 ]]; then
    [[ -n ${LEVELDB_BOUND_BIN:-} ]] || cargo bench --quiet --locked --bench leveldb_bound --no-run 2>/dev/null \
        || { echo "cargo bench --bench leveldb_bound --no-run failed" >&2; exit 1; }
    [[ -f $OUT/changes-$DELTAS.jsonl ]] \
        || { echo "--leveldb-bound needs $OUT/changes-*.jsonl: remove $STORE/done to publish them again" >&2; exit 1; }
fi

echo "## boot to ready: $ITEMS items + $DELTAS deltas x $CHANGES changes"
for run in 1 2 3; do
    for i in "${!BINS[@]}"; do
        boot_once "$run" "${LABELS[$i]}" "${BINS[$i]}"
        [[ $LEVELDB_BOUND == 0 || $i != 0 ]] || leveldb_bound_once "$run"
    done
done

if [[ $BOOT_ONLY == 0 ]] && command -v wrk >/dev/null; then
    echo "## search throughput: swap every second vs none (wrk -t2 -c32 -d10s)"
    LUA=$OUT/search.lua
    cat > "$LUA" <<'LUA'
wrk.method = "POST"
wrk.body = '{"query_text": "replicated storage latency", "top_k": 10}'
wrk.headers["Content-Type"] = "application/json"
LUA
    # One server per binary, each on its own state dir and live store.
    PIDS=(); PORTS=(); LIVES=(); BASE_SEQS=(); PUBLISHED=()
    for i in "${!BINS[@]}"; do
        tag=${LABELS[$i]:+-${LABELS[$i]}}
        STATE=$OUT/state-swap$tag
        rm -rf "$STATE"
        LIVE=$OUT/store-live$tag
        rm -rf "$LIVE"
        init_store "$LIVE"
        PORT=$(free_port)
        # A search queue that holds wrk's 32 connections: 503s must not count as throughput.
        DELTACACHE_SEARCH_QUEUE=64 RUST_LOG=warn "${BINS[$i]}" serve --bundle "$BUNDLE" --state-dir "$STATE" \
            --listen "127.0.0.1:$PORT" --store "file://$LIVE" --trusted-root "$ROOT" --follow-interval 1h \
            > "$OUT/swap$tag.log" 2>&1 &
        PIDS[i]=$!; PORTS[i]=$PORT; LIVES[i]=$LIVE; PUBLISHED[i]=0
        until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.05; done
        BASE_SEQS[i]=$(curl -s "http://127.0.0.1:$PORT/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])')
    done
    # caught_up I: waits (up to 5 minutes, nudging with SIGHUP) until server I has applied
    # every delta published to its live store, so that it is idle when the next run starts.
    caught_up() {
        local i=$1 want=$(( BASE_SEQS[$1] + PUBLISHED[$1] )) seq waited=0
        while true; do
            seq=$(curl -s "http://127.0.0.1:${PORTS[i]}/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])')
            (( seq >= want )) && return 0
            (( waited < 300 )) || { echo "server ${LABELS[i]} still at seq $seq after 5 minutes (want $want)" >&2; return 0; }
            (( waited % 5 == 0 )) && kill -HUP "${PIDS[i]}"
            sleep 1; waited=$((waited + 1))
        done
    }
    for run in 1 2 3; do
        for i in "${!BINS[@]}"; do
            label=${LABELS[$i]} pid=${PIDS[$i]} PORT=${PORTS[$i]} LIVE=${LIVES[$i]}
            [[ -z $label ]] || caught_up "$i"
            wrk -t2 -c32 -d10s -s "$LUA" "http://127.0.0.1:$PORT/search" > "$OUT/wrk-base.out"
            base=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-base.out")
            ! grep -q 'Non-2xx' "$OUT/wrk-base.out" || { echo "non-2xx answers: see $OUT/wrk-base.out" >&2; exit 1; }
            ( for s in $(seq 1 10); do
                  printf '{"op":"put","item":{"id":"swap-%s-%s","text":"swap replicated storage","category":"x"}}\n' "$run" "$s" > "$OUT/swap-change.jsonl"
                  RUST_LOG=error "$BIN" publish-delta --store "file://$LIVE" --key "$KEY" --bundle "$BUNDLE" --changes "$OUT/swap-change.jsonl" > /dev/null
                  kill -HUP "$pid"
                  sleep 1
              done ) &
            publisher=$!
            wrk -t2 -c32 -d10s -s "$LUA" "http://127.0.0.1:$PORT/search" > "$OUT/wrk-swapping.out"
            swapping=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-swapping.out")
            ! grep -q 'Non-2xx' "$OUT/wrk-swapping.out" || { echo "non-2xx answers: see $OUT/wrk-swapping.out" >&2; exit 1; }
            wait "$publisher"
            PUBLISHED[i]=$(( PUBLISHED[i] + 10 ))
            echo "run $run${label:+ $label}: no swaps ${base} req/s; a swap every second ${swapping} req/s"
            if [[ -n $label ]]; then
                record swap "$label" no_swaps_rps "$base"
                record swap "$label" swapping_rps "$swapping"
                record swap "$label" swapping_over_no_swaps "$(python3 -c "print(round($swapping / $base, 3))")"
            fi
        done
    done
    for i in "${!BINS[@]}"; do
        [[ -z ${LABELS[$i]} ]] || { caught_up "$i"; printf '%s: ' "${LABELS[$i]}"; }
        curl -s "http://127.0.0.1:${PORTS[$i]}/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("final seq", s["seq"])'
        kill -TERM "${PIDS[$i]}"; wait "${PIDS[$i]}" || true
    done
fi

if [[ -n $COMPARE_BIN ]]; then
    echo "## medians, $MAIN_LABEL vs $COMPARE_LABEL (ratio $MAIN_LABEL / $COMPARE_LABEL)"
    python3 - "$FIGURES" "$MAIN_LABEL" "$COMPARE_LABEL" <<'PY'
import collections, statistics, sys
figures = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    part, label, metric, value = line.rstrip("\n").split("\t")
    if (part, metric) not in order:
        order.append((part, metric))
    figures[(part, label, metric)].append(float(value))
new, old = sys.argv[2], sys.argv[3]
print(f"| part | figure | {new} median | {old} median | ratio | {new} runs | {old} runs |")
print("|---|---|---:|---:|---:|---|---|")
for part, metric in order:
    a, b = figures[(part, new, metric)], figures[(part, old, metric)]
    ma = statistics.median(a) if a else None
    mb = statistics.median(b) if b else None
    ratio = f"{ma / mb:.3f}" if ma is not None and mb else "-"
    show = lambda x: "-" if x is None else f"{x:g}"
    print(f"| {part} | {metric} | {show(ma)} | {show(mb)} | {ratio} "
          f"| {', '.join(map(show, a))} | {', '.join(map(show, b))} |")
PY
fi
