#!/usr/bin/env bash
# What trust through TUF costs, beside the earlier format (a signed head and Ed25519-signed
# deltas), each figure measured with both binaries in the same run (the figures in
# BENCHMARKS.md, "Trust").
#
#   scripts/bench_trust.sh --old-binary PATH [--items N] [--deltas D] [--sync-changes C]
#                          [--publish-changes P] [--runs R] [--out DIR] [--no-build]
#                          [--binary PATH]
#   scripts/bench_trust.sh --old-commit REV ...   (builds REV's release binary in a worktree)
#
# On an N-item bundle (default 100,000 items from scripts/gen_corpus.py --seed 42), each binary
# gets its own file:// store holding D deltas (default 10) of C changes each (default 1,000),
# published with its own commands. Then, R times (default 3), interleaved new/old:
#   1. sync of D deltas: `sync` on an empty state dir, wall-clock ms;
#   2. a poll with nothing new: `sync` again on the synced state dir, wall-clock ms, and the
#      bytes it read from the store (read(2) calls on files under the store dir, counted with
#      strace; the process's own start-up, bundle and state reads are not counted);
#   3. publish of a P-change delta (default 10,000) onto a copy of the D-delta store,
#      wall-clock ms.
# The old binary (e.g. commit dbdc854) is run with the earlier commands: `keygen`,
# `publish-delta --key K`, `sync --trusted-keys K.pub`. Medians and ratios (new / old) are
# printed at the end and written to OUT/results.md; every run is in OUT/figures.tsv.
# The new binary is target/release/deltacache, built unless --no-build; --binary PATH uses
# that release binary instead (and builds nothing).
set -euo pipefail

ITEMS=100000
DELTAS=10
SYNC_CHANGES=1000
PUBLISH_CHANGES=10000
RUNS=3
OUT=target/bench/trust
BUILD=1
OLD_BIN=
OLD_COMMIT=
NEW_BIN=
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --deltas) DELTAS=$2; shift 2 ;;
        --sync-changes) SYNC_CHANGES=$2; shift 2 ;;
        --publish-changes) PUBLISH_CHANGES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --binary) NEW_BIN=$2; BUILD=0; shift 2 ;;
        --old-binary) OLD_BIN=$2; shift 2 ;;
        --old-commit) OLD_COMMIT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $OLD_BIN || -n $OLD_COMMIT ]] || { echo "give --old-binary PATH or --old-commit REV (see --help)" >&2; exit 2; }
if [[ -n $NEW_BIN ]]; then
    [[ -x $NEW_BIN ]] || { echo "--binary $NEW_BIN is not an executable file" >&2; exit 2; }
    NEW_BIN=$(cd "$(dirname "$NEW_BIN")" && pwd)/$(basename "$NEW_BIN")
fi
for tool in python3 strace; do
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install $tool)" >&2; exit 1; }
done
cd "$(dirname "$0")/.."
ROOT=$PWD
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)

if [[ -z $OLD_BIN ]]; then
    OLD_SRC=$OUT/old-src
    if [[ ! -d $OLD_SRC ]]; then git worktree add --detach "$OLD_SRC" "$OLD_COMMIT"; fi
    (cd "$OLD_SRC" && cargo build --release --locked)
    OLD_BIN=$OLD_SRC/target/release/deltacache
fi
[[ -x $OLD_BIN ]] || { echo "--old-binary $OLD_BIN is not an executable file" >&2; exit 2; }
OLD_BIN=$(cd "$(dirname "$OLD_BIN")" && pwd)/$(basename "$OLD_BIN")
if [[ $BUILD == 1 ]]; then cargo build --release --locked; fi
NEW_BIN=${NEW_BIN:-$ROOT/target/release/deltacache}
[[ -x $NEW_BIN ]] || { echo "no release binary at $NEW_BIN: run without --no-build, or give --binary PATH" >&2; exit 1; }

now_ms() { date +%s%3N; }
FIGURES=$OUT/figures.tsv
: > "$FIGURES"
# record LABEL METRIC VALUE
record() { printf '%s\t%s\t%s\n' "$@" >> "$FIGURES"; }

CORPUS=$OUT/items-$ITEMS.jsonl
[[ -f $CORPUS ]] || python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS"

# changes FILE SEED N: N changes to the corpus (80 % updates, 10 % new items, 10 % deletes).
changes() {
    [[ -f $1 ]] && return 0
    python3 scripts/gen_changes.py --n "$3" --seed "$2" --items "$ITEMS" --new-prefix 'new-{seed}-' > "$1"
}
for d in $(seq 1 "$DELTAS"); do changes "$OUT/sync-$d-$SYNC_CHANGES.jsonl" "$d" "$SYNC_CHANGES"; done
PUBLISH=$OUT/publish-$PUBLISH_CHANGES.jsonl
changes "$PUBLISH" 1000 "$PUBLISH_CHANGES"

# The binaries, and the flags each format's commands take.
declare -A BIN
BIN[new]=$NEW_BIN
BIN[old]=$OLD_BIN
store_of() { echo "$OUT/$1/store-$DELTAS-$SYNC_CHANGES"; }
# sign_args LABEL: SIGN_ARGS, what publish-delta signs with (both formats: the key file).
sign_args() { SIGN_ARGS=(--key "$OUT/$1/publisher.key"); }
# sync_args LABEL STATE: SYNC_ARGS, a sync of STATE from LABEL's store with LABEL's trust.
sync_args() {
    local dir=$OUT/$1
    SYNC_ARGS=("${BIN[$1]}" sync --bundle "$dir/bundle" --state-dir "$2" --store "file://$(store_of "$1")")
    if [[ $1 == new ]]; then
        SYNC_ARGS+=(--trusted-root "$dir/root.json")
    else
        SYNC_ARGS+=(--trusted-keys "$dir/publisher.key.pub")
    fi
}

# setup LABEL: a bundle and a store of DELTAS deltas published with LABEL's binary.
setup() {
    local label=$1 bin=${BIN[$1]}
    local dir=$OUT/$label
    local bundle=$dir/bundle store key=$dir/publisher.key
    store=$(store_of "$label")
    mkdir -p "$dir"
    [[ -d $bundle ]] || RUST_LOG=error "$bin" build-base --input "$CORPUS" --dataset items --out "$bundle" > /dev/null
    [[ -f $key ]] || "$bin" keygen --out "$key" > /dev/null
    if [[ $label == new && ! -f $dir/root.json ]]; then
        "$bin" root init --out "$dir/root.json" --root-key "$key.pub" --targets-key "$key.pub" \
            --sign-with "$key" > /dev/null
    fi
    [[ -f $store.done ]] && return 0
    rm -rf "$store"
    if [[ $label == new ]]; then
        "$bin" repo init --store "file://$store" --root "$dir/root.json" --key "$key" > /dev/null
    fi
    sign_args "$label"
    for d in $(seq 1 "$DELTAS"); do
        RUST_LOG=error "$bin" publish-delta --store "file://$store" "${SIGN_ARGS[@]}" --bundle "$bundle" \
            --changes "$OUT/sync-$d-$SYNC_CHANGES.jsonl" > /dev/null
    done
    touch "$store.done"
}

# timed LOG CMD...: runs CMD with RUST_LOG=warn, output to LOG; prints wall-clock ms.
timed() {
    local log=$1 start end
    shift
    start=$(now_ms)
    RUST_LOG=warn "$@" > "$log" 2>&1 || { echo "failed: $*; see $log" >&2; exit 1; }
    end=$(now_ms)
    echo $(( end - start ))
}

# store_bytes STORE CMD...: runs CMD under strace; prints "BYTES FILES": what read(2) returned
# from files under STORE, and how many distinct files under STORE were read.
store_bytes() {
    local store=$1 trace=$OUT/strace.log
    shift
    RUST_LOG=warn strace -f -qq -e trace=read,pread64 -e signal=none -y -o "$trace" "$@" > /dev/null 2>&1
    python3 - "$store" "$trace" <<'PY'
import re, sys
store, trace = sys.argv[1], sys.argv[2]
total, files = 0, set()
pattern = re.compile(r'p?read(?:64)?\(\d+<([^>]*)>.*\)\s+=\s+(\d+)')
for line in open(trace):
    m = pattern.search(line)
    if m and m.group(1).startswith(store + "/"):
        total += int(m.group(2))
        files.add(m.group(1))
print(total, len(files))
PY
}

for label in new old; do setup "$label"; done
echo "## $ITEMS items; $DELTAS deltas of $SYNC_CHANGES changes; publish of $PUBLISH_CHANGES changes; $RUNS runs"
for run in $(seq 1 "$RUNS"); do
    for label in new old; do
        dir=$OUT/$label
        state=$dir/state
        rm -rf "$state"
        sync_args "$label" "$state"
        sync_ms=$(timed "$dir/sync-$run.log" "${SYNC_ARGS[@]}")
        poll_ms=$(timed "$dir/poll-$run.log" "${SYNC_ARGS[@]}")
        traced=$(store_bytes "$(store_of "$label")" "${SYNC_ARGS[@]}")
        read -r poll_bytes poll_files <<< "$traced"
        scratch=$dir/publish-store
        rm -rf "$scratch"
        cp -a "$(store_of "$label")" "$scratch"
        sign_args "$label"
        publish_ms=$(timed "$dir/publish-$run.log" "${BIN[$label]}" publish-delta --store "file://$scratch" \
            "${SIGN_ARGS[@]}" --bundle "$dir/bundle" --changes "$PUBLISH")
        echo "run $run $label: sync of $DELTAS deltas ${sync_ms} ms; poll ${poll_ms} ms, ${poll_bytes} bytes from ${poll_files} store files; publish of $PUBLISH_CHANGES changes ${publish_ms} ms"
        echo "    sync: $(tail -1 "$dir/sync-$run.log")"
        echo "    poll: $(tail -1 "$dir/poll-$run.log")"
        echo "    publish: $(tail -1 "$dir/publish-$run.log")"
        record "$label" "sync of $DELTAS deltas, ms" "$sync_ms"
        record "$label" "poll with nothing new, ms" "$poll_ms"
        record "$label" "poll with nothing new, bytes read from the store" "$poll_bytes"
        record "$label" "poll with nothing new, store files read" "$poll_files"
        record "$label" "publish of $PUBLISH_CHANGES changes, ms" "$publish_ms"
    done
done
for label in new old; do
    echo "$label store: $(du -sb "$(store_of "$label")" | cut -f1) bytes in $(find "$(store_of "$label")" -type f | wc -l) files"
done

echo "## medians, new vs old (ratio new / old)"
python3 - "$FIGURES" <<'PY' | tee "$OUT/results.md"
import collections, statistics, sys
figures, order = collections.defaultdict(list), []
for line in open(sys.argv[1]):
    label, metric, value = line.rstrip("\n").split("\t")
    if metric not in order:
        order.append(metric)
    figures[(label, metric)].append(float(value))
print("| figure | new median | old median | ratio new/old | new runs | old runs |")
print("|---|---:|---:|---:|---|---|")
show = lambda x: f"{x:g}"
for metric in order:
    a, b = figures[("new", metric)], figures[("old", metric)]
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{ma / mb:.2f}" if mb else "-"
    print(f"| {metric} | {show(ma)} | {show(mb)} | {ratio} | {', '.join(map(show, a))} | {', '.join(map(show, b))} |")
PY
