#!/usr/bin/env python3
"""Regenerate the plyvel LevelDB fixture in tests/fixtures/plyvel/.

deltacache must read databases left by the original Python pipeline, which
stored a catalogue with plyvel (the C++ LevelDB) as: key = the item id as UTF-8
bytes, value = the item's compact JSON
(``json.dumps(item, separators=(",", ":"), ensure_ascii=False)`` as UTF-8),
nothing else in the database. A database written by our own Rust code cannot
show that we read the real thing, so this script writes one with the real
C++ LevelDB through plyvel and writes:

* ``db/``: the LevelDB (``create_if_missing=True``, plyvel's default
  ``compression="snappy"``). 240 deterministic items ``{"id", "title",
  "text", "category", ["tier"], "price"}``: synthetic catalogue text
  (scripts/gen_corpus.py) in five categories, a few items without
  ``category``, a few with a numeric or boolean ``tier``, integer and float
  prices, and tricky ids: one with a space, a non-ASCII one (``café-1``), one
  starting with ``i/`` and one with ``m/`` (deltacache's own key prefixes), an
  upper-case one, and ``sku-00017``, a prefix of ``sku-00017-v2``. A few
  texts hold JSON escapes (quote, backslash, newline, tab) and non-ASCII
  (accents, CJK, an emoji outside the BMP). Items are written with
  ``db.write_batch()`` in generation order (not key order), then
  ``db.compact_range()`` moves everything into a snappy-compressed ``.ldb``
  table (the log left behind is empty). The info logs ``LOG``/``LOG.old``
  and ``LOCK`` are deleted: they carry no data, and LevelDB recreates
  ``LOCK`` on open.
* ``items.jsonl``: the same items, one per line, sorted by the id's UTF-8
  bytes (LevelDB's key order); each line is exactly the value bytes stored.
* ``model.json``: a scikit-learn ``TfidfVectorizer(stop_words="english")``
  fitted on the items' ``text``, saved with joblib and exported with
  scripts/export_sklearn_vectorizer.py (the same code path as its CLI).
* ``README.md``: what this is, the versions used, the rerun command.

The script then checks its own output: it opens a copy of ``db/`` with plyvel
(``create_if_missing=False``; opening writes to the directory, so never the
fixture itself) and requires every key/value to equal items.jsonl, at least
one ``.ldb`` file and at least one snappy-compressed table block.

items.jsonl, model.json and README.md are deterministic for a given Python /
scikit-learn / plyvel version; db/ also came out byte-identical across runs
with plyvel 1.5.1 (LevelDB 1.22), but nothing in LevelDB promises that.

Rerun from the repository root (takes a second; needs ``pip install plyvel``):

    python3 scripts/make_plyvel_fixture.py
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import joblib
import plyvel
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import export_sklearn_vectorizer as exporter  # noqa: E402
import gen_corpus  # noqa: E402

SEED = 20240917
N_REGULAR = 234  # plus len(TRICKY) = 240 items
BATCH = 40
CATEGORIES = ["database", "networking", "storage", "compute", "security"]
NO_CATEGORY = {11, 58, 103, 160, 199, 221}  # regular item numbers without "category"
TIERS = {5: 1, 23: 2, 47: True, 88: 3, 131: False, 170: 1, 208: 2}  # item number -> tier

# (id, title, text, category or None, tier or None, price)
TRICKY = [
    ("sku-00017-v2", "Compact Snapshot Engine V2",
     "Second revision of sku-00017 with faster snapshot restore. Same schema.",
     "database", None, 129.0),
    ("sku-00042 refurbished", "Refurbished Rack Switch",
     "Refurbished 10gbe rack switch, tested and certified. Ships with a \"like new\" warranty.",
     "networking", 2, 310.5),
    ("café-1", "Café Crème Edge Cache",
     "Edge cache for the café network in Zürich and 東京: naïve résumé of hot objects 🚀.",
     "storage", None, 49),
    ("i/legacy-7", "Legacy Import Tool",
     "Migrates C:\\legacy\\exports into the new catalogue.\nKeeps\tcolumn order.",
     None, None, 0),
    ("m/state", "State Snapshot Service",
     "Stores the pipeline state as a regular catalogue item; not metadata.",
     "compute", True, 15.25),
    ("SKU-UPPER-1", "Upper Case Identifier Audit",
     "Audit trail for upper case ids. Security review of key rotation.",
     "security", None, 1000),
]


def short_text(gen: gen_corpus.CorpusGenerator, rng: random.Random, cat: str) -> str:
    """One or two short sentences of gen_corpus words, mostly from `cat`'s topical
    vocabulary (a high topical share keeps the vocabulary, and model.json, small)."""
    sentences = []
    for _ in range(rng.choice([1, 2])):
        s = " ".join(gen.words(cat, rng.randint(4, 8), topical_share=0.8))
        sentences.append(s[0].upper() + s[1:] + ".")
    return " ".join(sentences)


def build_items() -> list[dict]:
    """Items in generation (= write) order."""
    rng = random.Random(SEED)
    gen = gen_corpus.CorpusGenerator(SEED)
    items = []
    for n in range(1, N_REGULAR + 1):
        cat = CATEGORIES[rng.randrange(len(CATEGORIES))]
        item = {
            "id": f"sku-{n:05d}",
            "title": gen.title(cat),
            "text": short_text(gen, rng, cat),
        }
        if n not in NO_CATEGORY:
            item["category"] = cat
        if n in TIERS:
            item["tier"] = TIERS[n]
        price = round(math.exp(3.6 + 1.1 * rng.gauss(0.0, 1.0)), 2)
        item["price"] = int(round(price)) if n % 9 == 0 else price
        items.append(item)
    # Interleave the tricky items with the regular ones.
    for k, (id_, title, text, cat, tier, price) in enumerate(TRICKY):
        item = {"id": id_, "title": title, "text": text}
        if cat is not None:
            item["category"] = cat
        if tier is not None:
            item["tier"] = tier
        item["price"] = price
        items.insert(17 + 37 * k, item)
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids), "duplicate ids"
    return items


def value_bytes(item: dict) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_db(db_dir: Path, items: list[dict]) -> None:
    if db_dir.exists():
        shutil.rmtree(db_dir)
    db = plyvel.DB(str(db_dir), create_if_missing=True, compression="snappy")
    try:
        for start in range(0, len(items), BATCH):
            with db.write_batch() as wb:
                for item in items[start : start + BATCH]:
                    wb.put(item["id"].encode("utf-8"), value_bytes(item))
        db.compact_range()
    finally:
        db.close()
    for name in ("LOG", "LOG.old", "LOCK"):
        p = db_dir / name
        if p.exists():
            p.unlink()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _snappy_decompress(buf: bytes) -> bytes:
    """Raw snappy format (what LevelDB stores in a block of type 1)."""
    n, pos = _varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                nb = length - 59
                length = int.from_bytes(buf[pos : pos + nb], "little")
                pos += nb
            length += 1
            out += buf[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | buf[pos]
            pos += 1
        else:
            nb = 2 if kind == 2 else 4
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos : pos + nb], "little")
            pos += nb
        for _ in range(length):  # byte by byte: copies may overlap
            out.append(out[-offset])
    assert len(out) == n, "bad snappy block"
    return bytes(out)


def _read_block(data: bytes, offset: int, size: int) -> tuple[int, bytes]:
    kind = data[offset + size]  # trailer: type byte + crc32c
    raw = data[offset : offset + size]
    assert kind in (0, 1), f"unknown block compression {kind}"
    return kind, _snappy_decompress(raw) if kind == 1 else raw


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    n_restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_table(ldb: Path) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Independent of plyvel: the (user key, value) puts in an .ldb file, and
    the compression type (0 none, 1 snappy) of each of its data blocks."""
    data = ldb.read_bytes()
    footer = data[-48:]
    assert struct.unpack("<Q", footer[-8:])[0] == 0xDB4775248B80FB57, f"{ldb}: not an sstable"
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)  # metaindex handle
    idx_off, pos = _varint(footer, pos)
    idx_size, _ = _varint(footer, pos)
    _, index = _read_block(data, idx_off, idx_size)
    puts, types = [], []
    for _sep, handle in _block_entries(index):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        kind, block = _read_block(data, off, size)
        types.append(kind)
        for ikey, value in _block_entries(block):
            assert ikey[-8] == 1, "not a put (deletion or unknown type)"  # low byte of seq<<8|type
            puts.append((ikey[:-8], value))
    return puts, types


def verify(db_dir: Path, items_jsonl: bytes) -> dict:
    files = sorted(os.listdir(db_dir))
    assert not {"LOG", "LOG.old", "LOCK"} & set(files), files
    expected = [line for line in items_jsonl.split(b"\n") if line]
    keys = [json.loads(v)["id"].encode("utf-8") for v in expected]

    # 1. plyvel, on a copy (opening a LevelDB writes to its directory).
    with tempfile.TemporaryDirectory(prefix="make_plyvel_fixture.") as tmp:
        copy = Path(tmp) / "db"
        shutil.copytree(db_dir, copy)
        db = plyvel.DB(str(copy), create_if_missing=False)
        try:
            got = list(db.iterator())
        finally:
            db.close()
    assert [k for k, _ in got] == keys, "plyvel: keys differ from items.jsonl ids"
    assert [v for _, v in got] == expected, "plyvel: values differ from items.jsonl"

    # 2. The table files alone (the log is empty after compact_range).
    ldbs = [f for f in files if f.endswith(".ldb")]
    assert ldbs, f"{db_dir}: no .ldb table file: {files}"
    logs = [f for f in files if f.endswith(".log")]
    assert all((db_dir / f).stat().st_size == 0 for f in logs), f"non-empty log: {logs}"
    puts, types = [], []
    for f in ldbs:
        p, t = read_table(db_dir / f)
        puts += p
        types += t
    assert sorted(puts) == list(zip(keys, expected)), ".ldb contents differ from items.jsonl"
    assert 1 in types, f"no snappy-compressed data block in {ldbs}: {types}"
    return {"files": files, "n": len(got), "block_types": types}


def leveldb_version() -> str:
    return str(getattr(plyvel, "__leveldb_version__", "unknown"))


def snappy_note() -> str:
    """The wheel's bundled libsnappy version, from its file name, if any."""
    libs = Path(plyvel.__file__).resolve().parent.parent / "plyvel.libs"
    for p in sorted(glob.glob(str(libs / "libsnappy-*.so.*"))):
        return f" (wheel-bundled libsnappy {p.split('.so.', 1)[1]})"
    return ""


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({len(data):,} bytes)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Regenerate tests/fixtures/plyvel/ (a LevelDB written by plyvel, items.jsonl, model.json)."
    )
    ap.add_argument(
        "--out-dir", default=str(REPO / "tests" / "fixtures" / "plyvel"), help="output directory"
    )
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    items = build_items()
    write_db(out_dir / "db", items)

    ordered = sorted(items, key=lambda it: it["id"].encode("utf-8"))
    items_jsonl = b"".join(value_bytes(it) + b"\n" for it in ordered)
    write(out_dir / "items.jsonl", items_jsonl)

    report = verify(out_dir / "db", items_jsonl)
    for f in report["files"]:
        size = (out_dir / "db" / f).stat().st_size
        print(f"wrote {(out_dir / 'db' / f).relative_to(REPO) if out_dir.is_relative_to(REPO) else f} ({size:,} bytes)")
    print(
        f"verified: plyvel reads back {report['n']} items equal to items.jsonl; "
        f"so do the .ldb files parsed directly; data blocks snappy/raw: "
        f"{report['block_types'].count(1)}/{report['block_types'].count(0)}"
    )

    vec = TfidfVectorizer(stop_words="english").fit([it["text"] for it in ordered])
    with tempfile.TemporaryDirectory(prefix="make_plyvel_fixture.") as tmp:
        model_path = os.path.join(tmp, "model.joblib")
        joblib.dump(vec, model_path)
        model = exporter.load_and_export(model_path)
        out = os.path.join(tmp, "model.json")
        exporter.write_json(model, out)  # byte for byte what the CLI writes
        write(out_dir / "model.json", Path(out).read_bytes())

    readme = (
        "# plyvel fixture\n\n"
        f"A LevelDB in the original Python pipeline's layout (key = item id as UTF-8, value = compact JSON), "
        f"written by the C++ LevelDB through plyvel with snappy compression: `db/` ({len(items)} items), "
        "the same values in key order in `items.jsonl`, and a `TfidfVectorizer(stop_words=\"english\")` "
        "fitted on their `text` exported to `model.json`.\n\n"
        f"Versions: plyvel {plyvel.__version__}, LevelDB {leveldb_version()}{snappy_note()}, "
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}.\n\n"
        "Rerun from the repository root: `python3 scripts/make_plyvel_fixture.py` (needs `pip install plyvel`).\n"
    )
    write(out_dir / "README.md", readme.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
