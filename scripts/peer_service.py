#!/usr/bin/env python3
"""The original design's query path, as an HTTP service: the benchmark peer of deltacache.

Before deltacache, "items like this text" was a Python service: a scikit-learn
``TfidfVectorizer`` embedded the query, an exact cosine top-k ran over the
catalogue's TF-IDF matrix with numpy/scipy, and each hit's metadata was read
from a LevelDB through plyvel (key = the item id, value = the item's JSON).
``scripts/bench.sh --peer`` rebuilds that path here and drives it with the same
wrk request stream as deltacache, so the two can be compared in one run.

    scripts/peer_service.py build --items items.jsonl --out DIR [--stop-words english|none]
        [--max-features N] [--id-field id] [--text-field text] [--data-version N]
    scripts/peer_service.py serve --dir DIR --listen 127.0.0.1:PORT [--workers 2] [--threads 4]

``build`` fits ``TfidfVectorizer`` on the items' text with the settings
``deltacache build-base`` uses by default (scikit-learn's defaults, English
stop words removed unless ``--stop-words none``, all terms unless
``--max-features``), keeps the TF-IDF matrix term-major (``X.T.tocsr()``, so
a query touches only its terms' columns: the fast form of ``X @ q.T``), and
writes every item as ``id -> compact JSON`` into ``DIR/db`` with plyvel
(write batches, then ``compact_range``), as the original pipeline did.

``serve`` serves ``POST /search`` with the request and response JSON of
deltacache (``{"query_text", "top_k"}`` -> ``{"results": [{"id", "score",
"metadata"}], "missing": 0, "data_version": N}``; ``top_k`` 1..1000, default
5; 400 on a bad body) and ``GET /readyz``, under gunicorn: ``--workers``
processes (default 2, one per core here) of the ``gthread`` worker class with
``--threads`` threads each (default 4), which keeps connections alive as
wrk's do. That is how a Python team would plausibly have run a WSGI service
in production (gunicorn in front of a plain WSGI app; no web framework, so
the peer is not slowed by one). LevelDB allows one process per database, so
each worker opens its own copy (``DIR/db-1`` ... made at start), as separate
replicas would.

Needs: scikit-learn, numpy, scipy, plyvel and gunicorn (``scripts/bench.sh
--peer`` installs them into a venv at ``target/peer-venv``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import threading
import time


def build(args: argparse.Namespace) -> int:
    import plyvel
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.monotonic()
    ids: list[str] = []
    texts: list[str] = []
    values: list[bytes] = []
    with open(args.items, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            ids.append(item[args.id_field])
            texts.append(item[args.text_field])
            values.append(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
    stop_words = None if args.stop_words == "none" else args.stop_words
    vectorizer = TfidfVectorizer(stop_words=stop_words, max_features=args.max_features)
    matrix = vectorizer.fit_transform(texts)
    by_term = matrix.T.tocsr()  # terms x items: a term's row is its posting list
    by_term.sort_indices()
    fitted = time.monotonic()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    db = plyvel.DB(os.path.join(args.out, "db"), create_if_missing=True)
    for lo in range(0, len(ids), 4096):
        with db.write_batch() as batch:
            for item_id, value in zip(ids[lo : lo + 4096], values[lo : lo + 4096]):
                batch.put(item_id.encode(), value)
    db.compact_range()
    db.close()
    with open(os.path.join(args.out, "model.pkl"), "wb") as f:
        pickle.dump(
            {"vectorizer": vectorizer, "by_term": by_term, "ids": ids, "data_version": args.data_version},
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    print(
        f"peer_service: {len(ids)} items, {len(vectorizer.vocabulary_)} terms, "
        f"{matrix.nnz} postings; fit {fitted - started:.1f} s, "
        f"leveldb {time.monotonic() - fitted:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0


class Searcher:
    """One worker's state: the model and its own LevelDB copy."""

    def __init__(self, directory: str, workers: int) -> None:
        import numpy as np
        import plyvel

        self.np = np
        with open(os.path.join(directory, "model.pkl"), "rb") as f:
            state = pickle.load(f)
        self.vectorizer = state["vectorizer"]
        self.by_term = state["by_term"]
        self.ids = state["ids"]
        self.data_version = state["data_version"]
        self.db = None
        # LevelDB takes a lock per database: each worker opens the first free copy.
        for i in range(workers):
            path = os.path.join(directory, "db" if i == 0 else f"db-{i}")
            try:
                self.db = plyvel.DB(path, create_if_missing=False)
                break
            except plyvel.IOError:
                continue
        if self.db is None:
            raise RuntimeError(f"no free LevelDB copy under {directory} for this worker")

    def search(self, query_text: str, top_k: int) -> bytes:
        np = self.np
        query = self.vectorizer.transform([query_text])  # 1 x terms, l2-normalised
        scores = query @ self.by_term  # 1 x items, sparse: cosine of every matching item
        data, slots = scores.data, scores.indices
        if len(data) > top_k:
            part = np.argpartition(-data, top_k - 1)[:top_k]
        else:
            part = np.arange(len(data))
        order = part[np.lexsort((slots[part], -data[part]))]
        results = []
        missing = 0
        for i in order:
            item_id = self.ids[slots[i]]
            value = self.db.get(item_id.encode())
            if value is None:
                missing += 1
                continue
            results.append({"id": item_id, "score": float(data[i]), "metadata": json.loads(value)})
        return json.dumps(
            {"results": results, "missing": missing, "data_version": self.data_version},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()


def make_app(directory: str, workers: int):
    searcher: list[Searcher] = []  # opened in the worker, after the fork, once
    opening = threading.Lock()

    def error(start_response, status: str, code: str, message: str):
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        if not searcher:
            with opening:
                if not searcher:
                    searcher.append(Searcher(directory, workers))
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/readyz":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
            return [b"ready"]
        if path != "/search" or method != "POST":
            return error(start_response, "404 Not Found", "not_found", "POST /search or GET /readyz")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            request = json.loads(environ["wsgi.input"].read(length))
            query_text = request["query_text"]
            top_k = request.get("top_k", 5)
            if not isinstance(query_text, str) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
                raise ValueError("query_text must be a string and top_k an integer in 1..1000")
        except (ValueError, KeyError, TypeError) as e:
            return error(start_response, "400 Bad Request", "bad_request", str(e))
        body = searcher[0].search(query_text, top_k)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    for i in range(1, args.workers):
        copy = os.path.join(args.dir, f"db-{i}")
        if not os.path.isdir(copy):
            shutil.copytree(os.path.join(args.dir, "db"), copy, ignore=shutil.ignore_patterns("LOCK"))

    class Peer(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", args.listen)
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("keepalive", 75)
            self.cfg.set("backlog", 2048)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")

        def load(self):
            return make_app(args.dir, args.workers)

    Peer().run()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fit the vectorizer and write the LevelDB")
    b.add_argument("--items", required=True, help="JSONL items, as for deltacache build-base")
    b.add_argument("--out", required=True, help="output directory (replaced)")
    b.add_argument("--stop-words", default="english", choices=("english", "none"))
    b.add_argument("--max-features", type=int, default=None)
    b.add_argument("--id-field", default="id")
    b.add_argument("--text-field", default="text")
    b.add_argument("--data-version", type=int, default=0, help="data_version in answers")
    s = sub.add_parser("serve", help="serve POST /search under gunicorn")
    s.add_argument("--dir", required=True, help="a directory written by build")
    s.add_argument("--listen", default="127.0.0.1:8090")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)
    return build(args) if args.command == "build" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
