#!/usr/bin/env python3
"""Deterministic `publish-delta --changes` files for the benchmarks.

N changes to a corpus of `gen_corpus.py` items (ids item-000001 ...): of every ten, eight
updates of random items, one new item and one delete of a random item; each put's text is
40 words of a small vocabulary. The same arguments always give the same bytes.
"""

import argparse
import json
import random
import sys

WORDS = ["replicated", "kafka", "storage", "latency", "vector", "search", "cache", "bucket", "index", "image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of changes")
    parser.add_argument("--seed", type=int, required=True, help="random seed (e.g. the delta's number)")
    parser.add_argument("--items", type=int, required=True, help="items in the corpus")
    parser.add_argument("--new-prefix", default="delta-{seed}-",
                        help="id prefix of new items, {seed} replaced (default: delta-{seed}-)")
    parser.add_argument("--tag", metavar="FIELD",
                        help="also put FIELD: SEED into every put item")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    prefix = args.new_prefix.replace("{seed}", str(args.seed))
    out = sys.stdout
    for i in range(args.n):
        r = i % 10
        if r == 9:
            out.write(json.dumps({"op": "delete", "id": f"item-{rng.randrange(1, args.items + 1):06d}"}) + "\n")
            continue
        item_id = f"item-{rng.randrange(1, args.items + 1):06d}" if r < 8 else f"{prefix}{i}"
        text = " ".join(rng.choice(WORDS) for _ in range(40))
        item = {"id": item_id, "category": "updated", "text": text}
        if args.tag:
            item[args.tag] = args.seed
        out.write(json.dumps({"op": "put", "item": item}) + "\n")


if __name__ == "__main__":
    main()
