#!/usr/bin/env python3
"""Splits a deltacache server's CPU profile into coarse buckets (used by scripts/bench.sh --profile).

    perf record -F 499 -e cpu-clock --call-graph dwarf,8192 -p PID -o perf.data -- sleep 8
    perf script -i perf.data > perf.txt
    python3 scripts/perf_buckets.py perf.txt

Each sample goes to one bucket:
  1. "kernel" when the sampled instruction is in the kernel (socket syscalls, scheduling);
  2. else a search component (LevelDB read, top-k, embedding, request JSON parsing) when any
     frame of the stack belongs to it;
  3. else the bucket of the innermost frame that names one (handlers, axum's service stack
     with the metrics and trace middleware, hyper, tokio).

Prints one "percent<TAB>bucket" line per bucket, largest first, then "samples<TAB>N".
"""

from __future__ import annotations

import collections
import sys

KERNEL = "kernel (socket syscalls, scheduling)"
COMPONENTS = [
    ("LevelDB read (MetadataReaders::get)", ["MetadataReaders::get", "rusty_leveldb"]),
    ("top-k (index scoring, selection)", ["top_k_filtered", "VectorIndex::top_k"]),
    ("embed (tokenise, TF-IDF)", ["TfidfModel::embed"]),
    ("request JSON parse", ["JsonBody", "serde_json::de"]),
]
LAYERS = [
    ("search handler (response JSON)", ["handlers::search"]),
    ("item handler", ["handlers::item"]),
    (
        "axum service stack (router, metrics + trace middleware)",
        ["record_request", "metrics", "tower_http", "tracing", "axum::"],
    ),
    ("hyper (HTTP/1 parse, encode, connection)", ["hyper::", "http::"]),
    ("tokio (runtime, I/O driver)", ["tokio::", "mio::"]),
]


def bucket(stack: list[str]) -> str:
    if "[kernel.kallsyms]" in stack[0]:
        return KERNEL
    text = "\n".join(stack)
    for name, patterns in COMPONENTS:
        if any(p in text for p in patterns):
            return name
    for frame in stack:  # leaf first
        for name, patterns in LAYERS:
            if any(p in frame for p in patterns):
                return name
    return "other"


def main(path: str) -> int:
    counts: collections.Counter[str] = collections.Counter()
    stack: list[str] = []

    def flush() -> None:
        if stack:
            counts[bucket(stack)] += 1
        stack.clear()

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
            elif line[0] in " \t":
                stack.append(line.strip())
            else:  # a sample's header line
                flush()
    flush()
    total = sum(counts.values())
    if total == 0:
        print("perf_buckets.py: no samples (was perf record allowed to sample?)", file=sys.stderr)
        return 1
    for name, n in counts.most_common():
        print(f"{100 * n / total:.1f}\t{name}")
    print(f"samples\t{total}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
