#!/usr/bin/env bash
# Boot-time sync and swap benchmarks (the figures in BENCHMARKS.md, "Sync").
#
#   scripts/bench_sync.sh [--items N] [--deltas D] [--changes C] [--out DIR] [--no-build]
#
# 1. Boot to ready: an N-item bundle (default 1,000,000) plus D deltas (default 10) of C
#    changes each (default 10,000) in a file:// store; `serve` is started on a fresh state dir
#    and timed until /readyz answers 200; the stage split comes from its log.
# 2. Search throughput with a swap every second versus no swaps, measured with wrk in the
#    same run (needs wrk).
set -euo pipefail

ITEMS=1000000
DELTAS=10
CHANGES=10000
OUT=target/bench/sync
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --deltas) DELTAS=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
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
    /usr/bin/time -v "$BIN" build-base --input "$CORPUS" --out "$BUNDLE" 2> "$OUT/build.log" >/dev/null
fi

STORE=$OUT/store-$ITEMS-$DELTAS-$CHANGES
KEY=$OUT/publisher.key
[[ -f $KEY ]] || "$BIN" keygen --out "$KEY" >/dev/null
if [[ ! -f $STORE/head ]]; then
    for d in $(seq 1 "$DELTAS"); do
        python3 - "$CORPUS" "$CHANGES" "$d" "$ITEMS" > "$OUT/changes-$d.jsonl" <<'PY'
import json, random, sys
corpus, n, d, n_items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(d)
for i in range(n):
    r = i % 10
    if r == 9:
        print(json.dumps({"op": "delete", "id": f"item-{rng.randrange(1, n_items + 1):06d}"}))
    else:
        item_id = f"item-{rng.randrange(1, n_items + 1):06d}" if r < 8 else f"delta-{d}-{i}"
        text = " ".join(rng.choice(["replicated", "kafka", "storage", "latency", "vector", "search", "cache", "bucket", "index", "image"]) for _ in range(40))
        print(json.dumps({"op": "put", "item": {"id": item_id, "category": "updated", "text": text, "delta": d}}))
PY
        RUST_LOG=error "$BIN" publish-delta --store "file://$STORE" --key "$KEY" --bundle "$BUNDLE" \
            --changes "$OUT/changes-$d.jsonl" > /dev/null
    done
fi

echo "## boot to ready: $ITEMS items + $DELTAS deltas x $CHANGES changes"
for run in 1 2 3; do
    STATE=$OUT/state-boot
    rm -rf "$STATE"
    PORT=$(free_port)
    start=$(now_ms)
    RUST_LOG=info "$BIN" serve --bundle "$BUNDLE" --state-dir "$STATE" --listen "127.0.0.1:$PORT" \
        --store "file://$STORE" --trusted-keys "$KEY.pub" --follow-interval 1h > "$OUT/boot-$run.log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "serve exited; see $OUT/boot-$run.log" >&2; exit 1; }
        sleep 0.02
    done
    ready=$(now_ms)
    kill -TERM "$pid"; wait "$pid" || true
    verify=$(grep -o 'verify_seconds=[0-9.]*' "$OUT/boot-$run.log" | head -1 | cut -d= -f2)
    clone=$(grep -o 'clone_seconds=[0-9.]*' "$OUT/boot-$run.log" | head -1 | cut -d= -f2)
    stages=$(grep -o 'stage_seconds=\[.*\]' "$OUT/boot-$run.log" | head -1)
    echo "run $run: ready in $(( ready - start )) ms; bundle digest check ${verify}s, bundle clone ${clone}s; sync $stages"
done

if command -v wrk >/dev/null; then
    echo "## search throughput: swap every second vs none (wrk -t2 -c32 -d10s)"
    STATE=$OUT/state-swap
    rm -rf "$STATE"
    LIVE=$OUT/store-live
    rm -rf "$LIVE"
    PORT=$(free_port)
    RUST_LOG=warn "$BIN" serve --bundle "$BUNDLE" --state-dir "$STATE" --listen "127.0.0.1:$PORT" \
        --store "file://$LIVE" --trusted-keys "$KEY.pub" --follow-interval 1h > "$OUT/swap.log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.05; done
    LUA=$OUT/search.lua
    cat > "$LUA" <<'LUA'
wrk.method = "POST"
wrk.body = '{"query_text": "replicated storage latency", "top_k": 10}'
wrk.headers["Content-Type"] = "application/json"
LUA
    for run in 1 2 3; do
        base=$(wrk -t2 -c32 -d10s -s "$LUA" "http://127.0.0.1:$PORT/search" | awk '/Requests\/sec/ {print $2}')
        ( for s in $(seq 1 10); do
              printf '{"op":"put","item":{"id":"swap-%s-%s","text":"swap replicated storage","category":"x"}}\n' "$run" "$s" > "$OUT/swap-change.jsonl"
              RUST_LOG=error "$BIN" publish-delta --store "file://$LIVE" --key "$KEY" --bundle "$BUNDLE" --changes "$OUT/swap-change.jsonl" > /dev/null
              kill -HUP "$pid"
              sleep 1
          done ) &
        publisher=$!
        swapping=$(wrk -t2 -c32 -d10s -s "$LUA" "http://127.0.0.1:$PORT/search" | awk '/Requests\/sec/ {print $2}')
        wait "$publisher"
        echo "run $run: no swaps ${base} req/s; a swap every second ${swapping} req/s"
    done
    curl -s "http://127.0.0.1:$PORT/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("final seq", s["seq"], "deltas applied", s["sync"]["deltas_applied"])'
    kill -TERM "$pid"; wait "$pid" || true
fi
