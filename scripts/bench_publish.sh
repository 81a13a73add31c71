#!/usr/bin/env bash
# Publish cost against the chain's length (BENCHMARKS.md, "Publish cost along the chain"):
# `publish-delta` with the publisher's tip cache versus reading the chain from the bundle
# on (--no-tip-cache), measured side by side at several chain lengths in one run.
#
#   scripts/bench_publish.sh [--items N] [--changes C] [--at L1,L2,...] [--runs R]
#                            [--binary PATH] [--out DIR]
#
# An N-item bundle (default 100,000; scripts/gen_corpus.py), a TUF repository in a file://
# store (one key for every role), then deltas of C changes each (default 1,000: 80% updates,
# 10% new items, 10% deletes) published with the tip cache until the chain is L long, for
# each L of --at (default 10,100,1000). At each L, R pairs (default 5) of real publishes,
# alternating which goes first: one with the tip cache, one with --no-tip-cache; each is
# measured by GNU time: the CPU seconds it used (user + system, the steadier figure on a
# shared machine) and the wall time. Prints every figure, then the medians and ratios.
set -euo pipefail

ITEMS=100000
CHANGES=1000
AT=10,100,1000
RUNS=5
BIN=
OUT=target/bench/publish
while [[ $# -gt 0 ]]; do
    case "$1" in
        --items) ITEMS=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --at) AT=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --binary) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
cd "$(dirname "$0")/.."
if [[ -z $BIN ]]; then
    cargo build --release --locked
    BIN=$PWD/target/release/deltacache
fi
[[ -x $BIN ]] || { echo "--binary $BIN is not an executable file" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -x /usr/bin/time ]] || { echo "GNU time is required (Debian: apt-get install time)" >&2; exit 1; }

CORPUS=$OUT/items-$ITEMS.jsonl
BUNDLE=$OUT/bundle-$ITEMS
[[ -f $CORPUS ]] || python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS"
[[ -d $BUNDLE ]] || "$BIN" build-base --input "$CORPUS" --out "$BUNDLE" --dataset items >/dev/null 2>"$OUT/build.log"

KEY=$OUT/key
ROOT=$OUT/root.json
STORE=$OUT/store
CACHE=$OUT/tips
rm -rf "$STORE" "$CACHE" "$KEY" "$KEY.pub" "$ROOT"
"$BIN" keygen --out "$KEY" >/dev/null
"$BIN" root init --out "$ROOT" --root-key "$KEY.pub" --targets-key "$KEY.pub" \
    --online-key "$KEY.pub" --sign-with "$KEY" >/dev/null
"$BIN" repo init --store "file://$STORE" --root "$ROOT" --key "$KEY" >/dev/null

changes() {
    python3 scripts/gen_changes.py --n "$CHANGES" --seed "$1" --items "$ITEMS" >"$OUT/changes.jsonl"
}

seq=0
publish() { # publish [extra flags...]: publishes the next delta, prints "cpu_ms wall_ms"
    seq=$((seq + 1))
    changes "$seq"
    /usr/bin/time -f '%U %S %e' -o "$OUT/time" \
        "$BIN" publish-delta --store "file://$STORE" --key "$KEY" --bundle "$BUNDLE" \
        --changes "$OUT/changes.jsonl" --tip-cache "$CACHE" "$@" >"$OUT/publish.log" 2>&1 \
        || { cat "$OUT/publish.log" >&2; echo "publish of seq $seq failed" >&2; exit 1; }
    awk '{printf "%d %d\n", ($1 + $2) * 1000, $3 * 1000}' "$OUT/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

RESULTS=$OUT/results.tsv
printf 'length\trun\tcached_cpu_ms\tcached_wall_ms\tuncached_cpu_ms\tuncached_wall_ms\n' >"$RESULTS"
IFS=, read -r -a lengths <<<"$AT"
for length in "${lengths[@]}"; do
    echo "publishing up to seq $length"
    while [[ $seq -lt $length ]]; do publish >/dev/null; done
    for run in $(seq 1 "$RUNS"); do
        if ((run % 2)); then
            cached=$(publish); uncached=$(publish --no-tip-cache)
        else
            uncached=$(publish --no-tip-cache); cached=$(publish)
        fi
        printf '%s\t%s\t%s\t%s\n' "$length" "$run" "${cached/ /$'\t'}" "${uncached/ /$'\t'}" | tee -a "$RESULTS"
    done
done
column_median() { awk -v l="$1" -v c="$2" '$1 == l {print $c}' "$RESULTS" | median; }
echo
echo "| chain length | tip cache: CPU ms | wall ms | reading the chain: CPU ms | wall ms | CPU ratio |"
echo "|---|---|---|---|---|---|"
for length in "${lengths[@]}"; do
    cc=$(column_median "$length" 3); cw=$(column_median "$length" 4)
    uc=$(column_median "$length" 5); uw=$(column_median "$length" 6)
    ratio=n/a
    [[ $uc == 0 ]] || ratio=$(printf '%.2fx' "$(echo "$cc / $uc" | bc -l)")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$length" "$cc" "$cw" "$uc" "$uw" "$ratio"
done
