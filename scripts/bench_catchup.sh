#!/usr/bin/env bash
# Catch-up benchmark (BENCHMARKS.md, "Catch-up snapshots"): an instance booting from a
# bundle D deltas behind the head, to ready, by replaying the chain versus by the catch-up
# snapshot, measured side by side in one run.
#
#   scripts/bench_catchup.sh [--items N] [--deltas D] [--changes C] [--runs R]
#                            [--binary PATH] [--out DIR]
#
# An N-item bundle (default 100,000; scripts/gen_corpus.py), a TUF repository in a file://
# store (one key for every role), D deltas (default 200) of C changes each (default 1,000:
# 80% updates, 10% new items, 10% deletes), then `compact --publish` at the head. Each run
# boots `serve` twice on fresh state dirs, alternating which goes first: once with
# --snapshot-after-deltas 0 (the replay) and once with the default (the snapshot), timed from
# start to the first 200 from /readyz. Both must end at the same seq with the same item
# count. Prints each run, the medians and their ratio.
set -euo pipefail

ITEMS=100000
DELTAS=200
CHANGES=1000
RUNS=3
BIN=
OUT=target/bench/catchup
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --deltas) DELTAS=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --binary) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
cd "$(dirname "$0")/.."
if [[ -z $BIN ]]; then
    cargo build --release --locked
    BIN=$PWD/target/release/deltacache
fi
[[ -x $BIN ]] || { echo "--binary $BIN is not an executable file" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

CORPUS=$OUT/items-$ITEMS.jsonl
BUNDLE=$OUT/bundle-$ITEMS
[[ -f $CORPUS ]] || python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS"
[[ -d $BUNDLE ]] || "$BIN" build-base --input "$CORPUS" --dataset items --out "$BUNDLE" >/dev/null 2>"$OUT/build.log"

KEY=$OUT/key
ROOT=$OUT/root.json
STORE=$OUT/store-$ITEMS-$DELTAS-$CHANGES
if [[ ! -f $STORE/done ]]; then
    rm -rf "$STORE" "$OUT/compacted" "$KEY" "$KEY.pub" "$ROOT"
    "$BIN" keygen --out "$KEY" >/dev/null
    "$BIN" root init --out "$ROOT" --root-key "$KEY.pub" --targets-key "$KEY.pub" \
        --online-key "$KEY.pub" --sign-with "$KEY" >/dev/null
    "$BIN" repo init --store "file://$STORE" --root "$ROOT" --key "$KEY" >/dev/null
    echo "publishing $DELTAS deltas of $CHANGES changes"
    for d in $(seq 1 "$DELTAS"); do
        python3 scripts/gen_changes.py --n "$CHANGES" --seed "$d" --items "$ITEMS" >"$OUT/changes.jsonl"
        RUST_LOG=error "$BIN" publish-delta --store "file://$STORE" --key "$KEY" --bundle "$BUNDLE" \
            --changes "$OUT/changes.jsonl" --force >/dev/null
    done
    RUST_LOG=error "$BIN" compact --bundle "$BUNDLE" --store "file://$STORE" --trusted-root "$ROOT" \
        --out "$OUT/compacted" --publish --key "$KEY" | tail -1
    touch "$STORE/done"
fi
SNAPSHOT_BYTES=$(find "$STORE/targets" -name '*.snapshot.tar' -printf '%s\n' | head -1)
CHAIN_BYTES=$(find "$STORE/targets" -name '*.delta' -printf '%s\n' | awk '{s += $1} END {print s}')

RESULTS=$OUT/results.tsv
: >"$RESULTS"
# boot MODE RUN: serve on a fresh state dir until ready; records MODE ms seq items.
boot() {
    local mode=$1 run=$2 state=$OUT/state-$1 log=$OUT/boot-$1-$2.log port pid start ready status
    local flags=()
    [[ $mode == replay ]] && flags=(--snapshot-after-deltas 0)
    rm -rf "$state"
    port=$(free_port)
    start=$(now_ms)
    RUST_LOG=info "$BIN" serve --bundle "$BUNDLE" --state-dir "$state" --listen "127.0.0.1:$port" \
        --store "file://$STORE" --trusted-root "$ROOT" --follow-interval 1h --boot-deadline 30m \
        "${flags[@]}" >"$log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "serve exited; see $log" >&2; exit 1; }
        sleep 0.02
    done
    ready=$(now_ms)
    status=$(curl -s "http://127.0.0.1:$port/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["seq"], s["n_items"])')
    kill -TERM "$pid"; wait "$pid" || true
    if [[ $mode == snapshot ]] && ! grep -q 'installed the catch-up snapshot' "$log"; then
        echo "the snapshot run did not use the snapshot; see $log" >&2; exit 1
    fi
    printf '%s\t%s\t%s\n' "$mode" "$(( ready - start ))" "$status" >>"$RESULTS"
    echo "run $run $mode: ready in $(( ready - start )) ms at seq/items $status"
}

echo "## boot to ready, $ITEMS items, $DELTAS deltas x $CHANGES changes behind (chain $CHAIN_BYTES bytes, snapshot $SNAPSHOT_BYTES bytes)"
for run in $(seq 1 "$RUNS"); do
    if (( run % 2 )); then boot replay "$run"; boot snapshot "$run"; else boot snapshot "$run"; boot replay "$run"; fi
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
ends = {r[2] for r in rows}
if len(ends) != 1:
    sys.exit(f"the runs ended in different states: {sorted(ends)}")
med = {m: statistics.median(int(r[1]) for r in rows if r[0] == m) for m in ("replay", "snapshot")}
print(f"median ready: replay {med['replay']:.0f} ms, snapshot {med['snapshot']:.0f} ms; snapshot/replay {med['snapshot'] / med['replay']:.2f}")
PY
