#!/usr/bin/env python3
"""Writes the built-in sample catalogue that `deltacache demo` serves.

Output: src/demo_catalogue.jsonl (a few hundred varied items, deterministic).
Rerun: python3 scripts/make_demo_catalogue.py
"""
import argparse
import json
import random

CATEGORIES = {
    "database": (
        ["key value store", "relational database", "document database", "time series database",
         "embedded database", "graph database", "column store", "search engine"],
        ["fast point lookups", "ACID transactions", "write ahead log", "LSM tree compaction",
         "B-tree indexes", "replication across regions", "snapshots and backups", "SQL queries",
         "secondary indexes", "crash recovery"],
    ),
    "networking": (
        ["load balancer", "service mesh", "reverse proxy", "DNS resolver", "VPN gateway",
         "CDN edge cache", "packet capture tool"],
        ["TLS termination", "HTTP/2 and gRPC", "connection pooling", "health checks",
         "low latency routing", "rate limiting", "IPv6 support", "observability hooks"],
    ),
    "storage": (
        ["object store", "block volume", "distributed filesystem", "backup appliance",
         "NVMe array", "tape library"],
        ["erasure coding", "copy-on-write snapshots", "deduplication", "S3 compatible API",
         "encryption at rest", "lifecycle policies", "high throughput sequential reads"],
    ),
    "machine-learning": (
        ["vector database", "feature store", "model server", "embedding service",
         "training pipeline", "annotation tool"],
        ["similarity search", "TF-IDF and embeddings", "GPU batching", "approximate nearest neighbours",
         "online evaluation", "model versioning", "drift detection"],
    ),
    "security": (
        ["secrets manager", "signing service", "intrusion detector", "web firewall",
         "identity provider", "audit log"],
        ["Ed25519 signatures", "key rotation", "least privilege", "tamper evident logs",
         "single sign-on", "hardware security modules", "short lived credentials"],
    ),
    "observability": (
        ["metrics pipeline", "log shipper", "tracing backend", "alert manager", "dashboard suite"],
        ["Prometheus exposition", "p99 latency histograms", "structured logs", "sampling",
         "service level objectives", "on-call paging"],
    ),
    "devops": (
        ["image builder", "deployment tool", "configuration manager", "CI runner",
         "container registry"],
        ["immutable machine images", "Packer templates", "blue green rollouts", "rollback in seconds",
         "systemd units", "reproducible builds", "infrastructure as code"],
    ),
    "kitchen": (
        ["espresso machine", "cast iron skillet", "chef's knife", "stand mixer", "rice cooker",
         "tea kettle"],
        ["even heating", "stainless steel", "dishwasher safe", "precise temperature control",
         "compact footprint", "café-quality crema", "crème brûlée torch included"],
    ),
    "outdoors": (
        ["trail running shoe", "ultralight tent", "down sleeping bag", "headlamp",
         "water filter", "climbing rope"],
        ["waterproof membrane", "weighs under a kilogram", "rated to minus ten degrees",
         "USB-C rechargeable", "packs small", "grippy rubber outsole"],
    ),
    "books": (
        ["systems programming book", "distributed systems textbook", "cookbook", "field guide",
         "novel", "poetry collection"],
        ["worked examples", "Rust and C code", "consensus and replication", "seasonal recipes",
         "illustrated", "translated from Français", "über-popular in Zürich"],
    ),
}

ADJECTIVES = ["compact", "robust", "open source", "managed", "self-hosted", "lightweight",
              "enterprise", "battle-tested", "modern", "portable", "affordable", "premium"]
BRANDS = ["Acme", "Borealis", "Cinder", "Dynamo", "Ember", "Fjord", "Granite", "Halcyon",
          "Ibis", "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orbit", "Pylon"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="src/demo_catalogue.jsonl")
    parser.add_argument("--per-category", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    items = []
    for category, (kinds, features) in CATEGORIES.items():
        for _ in range(args.per_category):
            kind = rng.choice(kinds)
            brand = rng.choice(BRANDS)
            adjective = rng.choice(ADJECTIVES)
            chosen = rng.sample(features, 3)
            title = f"{brand} {kind.title()}"
            text = (f"A {adjective} {kind} with {chosen[0]}, {chosen[1]} and {chosen[2]}. "
                    f"{brand} built it for teams who need {chosen[0]}.")
            items.append({"category": category, "title": title, "text": text,
                          "price": round(rng.uniform(5, 900), 2),
                          "tags": sorted(rng.sample(features, 2))})
    rng.shuffle(items)
    with open(args.out, "w", encoding="utf-8") as out:
        for idx, item in enumerate(items, start=1):
            record = {"id": f"demo-{idx:04d}", **item}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} items to {args.out}")


if __name__ == "__main__":
    main()
