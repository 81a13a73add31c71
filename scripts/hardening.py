#!/usr/bin/env python3
"""Clients and checkers for scripts/bench_hardening.sh (Python 3 standard library only).

Each subcommand is one piece the shell script cannot do well itself:

  changes   a deterministic changes file for `deltacache publish-delta`
  model     the expected item set after each delta of a chain, folded from the corpus and
            the changes files (a model independent of the daemon), as digests
  digest    the digest of an exported item set (`deltacache export`), in the same form
  classify  which expected version an exported state dir holds, cross-checked with
            `deltacache status --json`
  probe     a loop of requests, a new connection each (GET /livez, or POST /search), with
            latency percentiles, statuses and the x-data-version of each answer
  slow      holds idle connections, headers trickled a byte a second, bodies trickled or
            stalled, reopening each one the server closes, and times every close
  fuzz      a randomised campaign of malformed and odd requests over raw sockets, checking
            that no answer is a 5xx and that every 4xx has the JSON error shape
  load      keep-alive connections driving a mix of routes, checking every answer and that
            the x-data-version never goes back within a connection

Every subcommand that measures prints one JSON object on stdout (and writes it to --out).
Run `scripts/hardening.py SUBCOMMAND --help` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

# ---------------------------------------------------------------------------------------------
# Item sets: changes, model, digest
# ---------------------------------------------------------------------------------------------

WORDS = (
    "replicated storage latency vector search cache bucket index image kafka queue "
    "backup snapshot replica shard compaction throughput database network sensor"
).split()


def cmd_changes(args: argparse.Namespace) -> None:
    """Writes ARGS.n changes: updates of bundle items, adds of new ids, deletes of bundle
    items (none with --no-deletes, so that every bundle id keeps answering 200)."""
    rng = random.Random(f"{args.seed}-{args.delta}")
    pad = " ".join(rng.choice(WORDS) for _ in range(args.text_words))
    with open(args.out, "w", encoding="utf-8") as out:
        for i in range(args.n):
            r = rng.random()
            base_id = f"item-{rng.randrange(1, args.items + 1):06d}"
            if r < args.delete_share and not args.no_deletes:
                out.write(json.dumps({"op": "delete", "id": base_id}) + "\n")
                continue
            if r < 0.70:
                item_id = base_id
            else:
                item_id = f"{args.prefix}-{args.delta}-{i}"
            text = " ".join(rng.choice(WORDS) for _ in range(6)) + f" {args.prefix} {args.delta} {i} " + pad
            item = {
                "id": item_id,
                "title": f"{args.prefix} {args.delta}.{i}",
                "category": rng.choice(["database", "messaging", "updated", "storage"]),
                "text": text,
                "delta": args.delta,
            }
            out.write(json.dumps({"op": "put", "item": item}) + "\n")


def canonical(line: str) -> str:
    return json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_of(canonical_lines) -> tuple[str, int]:
    lines = sorted(canonical_lines)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest(), len(lines)


def cmd_model(args: argparse.Namespace) -> None:
    items: dict[str, str] = {}
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                items[obj["id"]] = canonical(line)
    model = {}
    digest, n = digest_of(items.values())
    model["0"] = {"digest": digest, "n_items": n}
    for seq, path in enumerate(args.changes, start=1):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                change = json.loads(line)
                if change["op"] == "put":
                    item = change["item"]
                    items[item["id"]] = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                else:
                    items.pop(change["id"], None)
        digest, n = digest_of(items.values())
        model[str(seq)] = {"digest": digest, "n_items": n}
    emit(model, args.out)


def export_digest(path: str) -> tuple[str, int]:
    with open(path, encoding="utf-8") as f:
        return digest_of(canonical(line) for line in f if line.strip())


def cmd_digest(args: argparse.Namespace) -> None:
    digest, n = export_digest(args.export)
    print(f"{digest} {n}")


def cmd_classify(args: argparse.Namespace) -> None:
    """Prints `old`, `new`, or `other: <why>`: which of the two expected versions the state
    dir holds. The export's digest must equal the model's for that seq, and `status --json`
    must agree: applied seq, and a current version of that seq and item count."""
    with open(args.model, encoding="utf-8") as f:
        model = json.load(f)
    digest, n = export_digest(args.export)
    with open(args.status, encoding="utf-8") as f:
        status = json.load(f)
    found = None
    for label, seq in (("old", args.old), ("new", args.new)):
        if model[str(seq)]["digest"] == digest:
            found = (label, seq)
    if found is None:
        print(f"other: export holds {n} items, digest {digest[:16]}, matching neither seq {args.old} nor {args.new}")
        return
    label, seq = found
    if status.get("applied_seq") != seq:
        print(f"other: export matches seq {seq} but status says applied seq {status.get('applied_seq')}")
        return
    current = [v for v in status.get("versions", []) if v[0] == status.get("current")]
    if not current or current[0][1] != seq or current[0][2] != model[str(seq)]["n_items"]:
        print(f"other: current version {status.get('current')} is not seq {seq} with {n} items: {current}")
        return
    print(label)


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client over raw sockets
# ---------------------------------------------------------------------------------------------


class Response:
    """One parsed answer."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Incomplete(Exception):
    """The connection ended before a whole answer arrived."""


def read_response(sock: socket.socket, buf: bytearray, head_request: bool = False) -> Response:
    """Reads one answer from a blocking socket (with a timeout set); leftover bytes stay in
    BUF. Raises Incomplete when the server closes first, socket.timeout on a timeout."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise Incomplete("closed before the headers" if not buf else "closed inside the headers")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.append((key.strip().lower(), value.strip()))
    resp = Response(status, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return resp
    length = resp.header("content-length")
    if resp.header("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise Incomplete("closed inside a chunked body")
                buf += chunk
            line_end = buf.find(b"\r\n")
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            del buf[: line_end + 2]
            while len(buf) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise Incomplete("closed inside a chunked body")
                buf += chunk
            body += buf[:size]
            del buf[: size + 2]
            if size == 0:
                break
        resp.body = bytes(body)
    elif length is not None:
        n = int(length)
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise Incomplete("closed inside the body")
            buf += chunk
        resp.body = bytes(buf[:n])
        del buf[:n]
    else:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        resp.body = bytes(buf)
        buf.clear()
    return resp


def one_request(host: str, port: int, raw: bytes, timeout: float) -> tuple[Response, float]:
    """Sends RAW on a new connection; returns the (final, non-1xx) answer and the seconds
    from connect to the end of the answer."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(raw)
        buf = bytearray()
        head_request = raw.startswith(b"HEAD ")
        while True:
            resp = read_response(sock, buf, head_request)
            if resp.status >= 200:
                return resp, time.perf_counter() - t0


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def emit(obj: dict, out: str | None) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> None:
    if args.search:
        body = json.dumps({"query_text": args.search, "top_k": 3}).encode()
        raw = (
            f"POST /search HTTP/1.1\r\nHost: {args.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
    else:
        raw = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
    latencies, statuses, versions, errors = [], {}, {}, {}
    stop_file = args.stop_file
    deadline = time.monotonic() + args.duration
    next_at = time.monotonic()
    while time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
        try:
            resp, secs = one_request(args.host, args.port, raw, args.timeout)
            latencies.append(secs * 1000)
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            v = resp.header("x-data-version") or "none"
            versions[v] = versions.get(v, 0) + 1
        except (OSError, Incomplete, ValueError) as e:
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
        next_at += args.interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()
    emit(
        {
            "n": len(latencies),
            "errors": errors,
            "statuses": statuses,
            "versions": versions,
            "p50_ms": percentile(latencies, 50),
            "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies) if latencies else None,
        },
        args.out,
    )


# ---------------------------------------------------------------------------------------------
# slow: slow clients
# ---------------------------------------------------------------------------------------------


class SlowConn:
    def __init__(self, kind: str, sock: socket.socket, opened: float):
        self.kind = kind
        self.sock = sock
        self.opened = opened
        self.received = bytearray()
        self.first_answer_at: float | None = None


def cmd_slow(args: argparse.Namespace) -> None:
    """Holds ARGS.idle idle connections, ARGS.header_trickle connections sending a header a
    byte a second, ARGS.body_trickle sending a body a byte a second, and ARGS.body_stall
    sending part of a body and then nothing, for ARGS.duration seconds. Each connection the
    server closes is timed (connect to close) and replaced with a new one of its kind."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    wanted = {
        "idle": args.idle,
        "header_trickle": args.header_trickle,
        "body_trickle": args.body_trickle,
        "body_stall": args.body_stall,
    }
    stats = {k: {"opened": 0, "closed_by_server": 0, "lifetimes_s": [], "answers": {}, "answer_after_s": [],
                 "connect_errors": 0} for k in wanted}
    conns: dict[int, SlowConn] = {}
    host, port = args.host, args.port
    start = time.monotonic()
    stop_opening = start + args.duration

    def open_one(kind: str) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except OSError:
            stats[kind]["connect_errors"] += 1
            return
        sock.setblocking(False)
        now = time.monotonic()
        conn = SlowConn(kind, sock, now)
        try:
            if kind == "header_trickle":
                sock.send(f"GET /livez HTTP/1.1\r\nHost: {host}\r\nX-Trickle: ".encode())
            elif kind in ("body_trickle", "body_stall"):
                sock.send(
                    f"POST /search HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 60000\r\n\r\n{{\"query_text\": \"".encode()
                )
        except OSError:
            pass
        conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)
        stats[kind]["opened"] += 1

    def close_one(conn: SlowConn, by_server: bool) -> None:
        now = time.monotonic()
        s = stats[conn.kind]
        if by_server:
            s["closed_by_server"] += 1
            s["lifetimes_s"].append(now - conn.opened)
        if conn.received:
            try:
                status = conn.received.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            except IndexError:
                status = "garbled"
            s["answers"][status] = s["answers"].get(status, 0) + 1
            if conn.first_answer_at is not None:
                s["answer_after_s"].append(conn.first_answer_at - conn.opened)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def top_up() -> None:
        counts = {k: 0 for k in wanted}
        for c in conns.values():
            counts[c.kind] += 1
        for kind, n in wanted.items():
            for _ in range(n - counts[kind]):
                open_one(kind)

    top_up()
    next_trickle = time.monotonic() + 1
    while True:
        now = time.monotonic()
        if now >= stop_opening:
            break
        for key, _ in sel.select(timeout=0.05):
            conn = key.data
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                if not conn.received:
                    conn.first_answer_at = time.monotonic()
                conn.received += data
            else:
                close_one(conn, by_server=True)
        if time.monotonic() >= next_trickle:
            next_trickle += 1
            for conn in list(conns.values()):
                if conn.kind in ("header_trickle", "body_trickle"):
                    try:
                        conn.sock.send(b"a")
                    except BlockingIOError:
                        pass
                    except OSError:
                        close_one(conn, by_server=True)
        top_up()
    still_open = {k: 0 for k in wanted}
    for conn in list(conns.values()):
        still_open[conn.kind] += 1
        close_one(conn, by_server=False)
    summary = {"duration_s": args.duration, "held": wanted, "still_open_at_end": still_open, "kinds": {}}
    for kind, s in stats.items():
        life = s["lifetimes_s"]
        ans = s["answer_after_s"]
        summary["kinds"][kind] = {
            "opened": s["opened"],
            "connect_errors": s["connect_errors"],
            "closed_by_server": s["closed_by_server"],
            "close_after_s_min": min(life) if life else None,
            "close_after_s_p50": percentile(life, 50),
            "close_after_s_p99": percentile(life, 99),
            "close_after_s_max": max(life) if life else None,
            "answers": s["answers"],
            "answer_after_s_p50": percentile(ans, 50),
            "answer_after_s_max": max(ans) if ans else None,
        }
    emit(summary, args.out)


# ---------------------------------------------------------------------------------------------
# fuzz: malformed and odd requests over raw sockets
# ---------------------------------------------------------------------------------------------

STANDARD_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"]
ROUTES = [
    "/search", "/items/batch", "/items/item-000001", "/items/item-009999", "/items/no-such-item",
    "/livez", "/readyz", "/status", "/metrics", "/", "/items", "/items/", "/search/",
    "/items/item-000001/extra", "/SEARCH", "/metrics/", "/status?x=1",
]
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Fuzzer:
    """Generates one request (raw bytes) per case from a seeded generator."""

    def __init__(self, rng: random.Random, vocabulary: list[str]):
        self.rng = rng
        self.vocabulary = vocabulary or WORDS

    # -- JSON values -----------------------------------------------------------------------
    def string(self) -> str:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            return ""
        if kind == 1:
            return " ".join(r.choice(self.vocabulary) for _ in range(r.randrange(1, 8)))
        if kind == 2:
            return "".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randrange(1, 40)))
        if kind == 3:  # any code point but surrogates
            return "".join(chr(r.choice([r.randrange(0x80, 0xD800), r.randrange(0xE000, 0x110000)]))
                           for _ in range(r.randrange(1, 20)))
        if kind == 4:
            return "\u0000\u001f\"\\\n\t" * r.randrange(1, 5)
        if kind == 5:
            return "x" * r.choice([1000, 10000, 60000])
        if kind == 6:
            return r.choice(["item-000001", "item-010000", "item-000000", "../../etc/passwd", "batch", "%00"])
        if kind == 7:
            return "😀ü中文" * r.randrange(1, 10)
        return " ".join(r.choice(self.vocabulary) for _ in range(r.randrange(200, 600)))

    def number(self):
        return self.rng.choice([
            0, 1, -1, 5, 10, 1000, 1001, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**64),
            10**40, 0.5, 1.0, 1.5, -0.0, 1e308, 5e-324, 1e-7, self.rng.randrange(-10**6, 10**6),
            self.rng.random() * 2000,
        ])

    def value(self, depth: int = 0):
        r = self.rng
        kind = r.randrange(8 if depth < 4 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return self.number()
        if kind in (3, 4):
            return self.string()
        if kind == 5:
            return [self.value(depth + 1) for _ in range(r.randrange(0, 6))]
        keys = ["query_text", "top_k", "filter", "ids", "category", "price", "x", "", "\u0000"]
        return {r.choice(keys + [self.string()[:20]]): self.value(depth + 1) for _ in range(r.randrange(0, 6))}

    def json_text(self, value) -> bytes:
        try:
            return json.dumps(value, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")
        except (ValueError, OverflowError):
            return b"null"

    def search_body(self) -> bytes:
        r = self.rng
        shape = r.randrange(12)
        if shape == 0:
            return self.json_text(self.value())
        if shape == 1:  # deep nesting
            depth = r.choice([64, 127, 128, 129, 1000, 20000])
            opener, closer = r.choice([("[", "]"), ('{"a":', "}")])
            inner = opener * depth + "1" + closer * depth
            return ('{"query_text": "x", "filter": ' + inner + "}").encode() if r.random() < 0.5 else inner.encode()
        if shape == 2:  # huge or odd numbers in top_k
            top_k = r.choice(["1e400", "-1e400", "123456789012345678901234567890", "1.0", "1e2", "NaN",
                              "Infinity", "-0", "00", "0x10", "+5", "5.", ".5", "1E3", "2e-3"])
            return ('{"query_text": "database index", "top_k": ' + top_k + "}").encode()
        if shape == 3:  # invalid UTF-8 in a string
            junk = bytes(r.randrange(0x80, 0x100) for _ in range(r.randrange(1, 8)))
            return b'{"query_text": "data' + junk + b'base", "top_k": 3}'
        if shape == 4:  # not quite JSON
            return r.choice([b"", b"{", b"}", b"{}", b"[]", b"null", b"\xef\xbb\xbf{\"query_text\": \"x\"}",
                             b'{"query_text": "x"} trailing', b"{'query_text': 'x'}", b'{"query_text": "x",}',
                             b'{"query_text": "x" /* c */}', b'{"query_text": "\\ud800"}',
                             b'{"query_text": "\\u0000"}', b'{"query_text": "x", "query_text": "y"}',
                             b'{"query_text": "x\x01"}', b"\x00" * 10, b'{"query_text":"x"}\x00'])
        body: dict = {}
        if r.random() < 0.9:
            body["query_text"] = self.string() if r.random() < 0.75 else self.value()
        if r.random() < 0.6:
            body["top_k"] = self.number() if r.random() < 0.7 else self.value()
        if r.random() < 0.5:
            f = r.randrange(6)
            if f == 0:
                body["filter"] = {}
            elif f == 1:
                body["filter"] = {"category": r.choice(["database", "messaging", "updated", "nope", ""])}
            elif f == 2:
                body["filter"] = {"category": self.value()}
            elif f == 3:
                body["filter"] = {self.string()[:30]: self.value() for _ in range(r.randrange(1, 4))}
            else:
                body["filter"] = self.value()
        if r.random() < 0.2:
            body[self.string()[:20]] = self.value()
        return self.json_text(body)

    def batch_body(self) -> bytes:
        r = self.rng
        shape = r.randrange(6)
        if shape == 0:
            return self.json_text(self.value())
        if shape == 1:
            n = r.choice([0, 1, 999, 1000, 1001, 5000])
            ids = [f"item-{r.randrange(0, 12000):06d}" for _ in range(n)]
            return self.json_text({"ids": ids})
        if shape == 2:
            return self.json_text({"ids": [self.value() for _ in range(r.randrange(0, 10))]})
        if shape == 3:
            junk = bytes(r.randrange(0x80, 0x100) for _ in range(r.randrange(1, 8)))
            return b'{"ids": ["item-000001", "' + junk + b'"]}'
        return self.json_text({"ids": [self.string() for _ in range(r.randrange(0, 20))]})

    # -- request lines, paths, headers -----------------------------------------------------
    def method(self) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind <= 1:
            return r.choice(STANDARD_METHODS).encode()
        if kind == 2:  # invented tokens
            return "".join(r.choice(TOKEN_CHARS) for _ in range(r.randrange(1, 16))).encode()
        if kind == 3:
            return r.choice(STANDARD_METHODS).lower().encode()
        if kind == 4:
            return ("X" * r.choice([64, 1000, 10000])).encode()
        return r.choice([b"GE T", b"G\x00T", b"\xff\xfe", b"", b"GET\t", b"P\xc3\xb6ST", b"(GET)", b"GET:"])

    def path(self) -> bytes:
        r = self.rng
        kind = r.randrange(10)
        if kind <= 2:
            return r.choice(ROUTES).encode()
        if kind == 3:  # random bytes, percent-encoded
            raw = bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))
            return ("/items/" + "".join(f"%{b:02X}" for b in raw)).encode()
        if kind == 4:  # random text, percent-encoded as a browser would
            return ("/items/" + quote(self.string()[:200], safe="")).encode()
        if kind == 5:
            return ("/items/" + "a" * r.choice([100, 1000, 8000, 30000, 70000])).encode()
        if kind == 6:
            return r.choice([b"/items/../search", b"/../../../etc/passwd", b"/items/%2e%2e/%2e%2e/status",
                             b"/items/..", b"/./livez", b"//items//item-000001", b"/items/a%2Fb",
                             b"/items/%00", b"/items/%", b"/items/%zz", b"/items/%C0%AF", b"*",
                             b"http://127.0.0.1/search", b"search", b"", b"/items/item-000001#frag",
                             b"/search?top_k=5&&==", b"/items/\xc3\xbc", b"/items/\xff", b"/items/a b",
                             b"/items/\x7f", b"/\\items\\x"])
        if kind == 7:  # raw unicode bytes
            return ("/items/" + self.string()[:50]).encode("utf-8", "surrogatepass")
        if kind == 8:
            return ("/" + "/".join(r.choice(["..", ".", "items", "search", "%2e", "x"]) for _ in range(r.randrange(1, 12)))).encode()
        return ("/items/" + quote("".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randrange(1, 30))), safe="/")).encode()

    def request(self) -> tuple[str, bytes]:
        """One case: (kind, raw bytes)."""
        r = self.rng
        kind = r.choices(["search", "batch", "method", "path", "headers", "framing", "garbage"],
                         weights=[30, 12, 12, 14, 14, 12, 6])[0]
        method, path, body = b"POST", b"/search", b""
        headers: list[bytes] = [b"Host: 127.0.0.1", b"Connection: close"]
        version = b"HTTP/1.1"
        if kind == "search":
            body = self.search_body()
        elif kind == "batch":
            path, body = b"/items/batch", self.batch_body()
        elif kind == "method":
            method, path = self.method(), r.choice(ROUTES).encode()
            body = self.search_body() if r.random() < 0.5 else b""
        elif kind == "path":
            method = r.choice([b"GET", b"GET", b"POST", b"HEAD", b"DELETE"])
            path = self.path()
            body = self.search_body() if method == b"POST" else b""
        if r.random() < 0.8:
            headers.append(b"Content-Type: " + r.choice([b"application/json", b"application/json; charset=utf-8",
                                                          b"text/plain", b"application/x-www-form-urlencoded",
                                                          b"application/json; charset=utf-16", b"", b"\xff\xfe"]))
        framing = "content-length"
        if kind == "headers":
            path, body = r.choice([b"/search", b"/items/batch", b"/items/item-000001", b"/livez", b"/status"]), self.search_body()
            method = b"POST" if path in (b"/search", b"/items/batch") else r.choice([b"GET", b"POST"])
            for _ in range(r.randrange(1, 4)):
                h = r.randrange(12)
                if h == 0:
                    headers.append(b"X-Big: " + b"a" * r.choice([1000, 8000, 60000, 200000, 500000]))
                elif h == 1:
                    headers.extend(f"X-Many-{i}: {i}".encode() for i in range(r.choice([50, 98, 101, 500])))
                elif h == 2:
                    headers.append(b"X-Bytes: " + bytes(r.randrange(0x80, 0x100) for _ in range(r.randrange(1, 50))))
                elif h == 3:
                    headers.append(bytes(r.randrange(0x21, 0x7F) for _ in range(r.randrange(1, 10))) + b": v")
                elif h == 4:
                    headers.append(r.choice([b"NoColonHere", b" folded: x", b"X-Obs: a\r\n continued", b": empty-name",
                                             b"X-Ctl: a\x00b", b"X-Ctl: a\x7fb", b"X Space: y", b"X-Tab:\tvalue"]))
                elif h == 5:
                    headers = [x for x in headers if not x.startswith(b"Host")]
                    if r.random() < 0.5:
                        headers += [b"Host: a", b"Host: b"]
                elif h == 6:
                    headers.append(b"Expect: 100-continue")
                elif h == 7:
                    headers.append(r.choice([b"Connection: upgrade\r\nUpgrade: websocket", b"Upgrade: h2c",
                                             b"Connection: keep-alive, close", b"Connection: \xff"]))
                elif h == 8:
                    headers.append(b"Content-Encoding: " + r.choice([b"gzip", b"br", b"deflate", b"zstd", b"x"]))
                elif h == 9:
                    headers.append(b"Accept: " + r.choice([b"text/html", b"*/*", b"application/xml", b"\xff"]))
                elif h == 10:
                    version = r.choice([b"HTTP/1.0", b"HTTP/1.1", b"http/1.1", b"HTTP/2.0", b"HTTP/1.2",
                                        b"HTTP/0.9", b"HTTP/1.1 extra", b"HTTP/1", b"HTTP/", b""])
                else:
                    headers.append(b"Cookie: " + b"k=v; " * r.randrange(1, 2000))
        elif kind == "framing":
            path = r.choice([b"/search", b"/items/batch"])
            body = self.search_body() if path == b"/search" else self.batch_body()
            framing = r.choice(["dup-cl-same", "dup-cl-diff", "cl-bad", "cl-short", "cl-long", "cl-te",
                                "chunked", "chunked-bad", "te-unknown", "none", "pipelined"])
        elif kind == "garbage":
            raw = bytes(r.randrange(256) for _ in range(r.randrange(1, 300)))
            prefix = r.choice([b"", b"GET ", b"POST /search HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
            return kind, prefix + raw + b"\r\n\r\n"
        return kind, self.frame(method, path, version, headers, body, framing)

    def frame(self, method: bytes, path: bytes, version: bytes, headers: list[bytes], body: bytes, framing: str) -> bytes:
        r = self.rng
        request_line = method + b" " + path + (b" " + version if version else b"")
        cl = f"Content-Length: {len(body)}".encode()
        if framing == "content-length":
            if body or method == b"POST":
                headers.append(cl)
        elif framing == "dup-cl-same":
            headers += [cl, cl]
        elif framing == "dup-cl-diff":
            headers += [cl, f"Content-Length: {len(body) + r.randrange(1, 10)}".encode()]
        elif framing == "cl-bad":
            headers.append(b"Content-Length: " + r.choice([b"abc", b"-1", b"1e3", b"+5", b" 5 ", b"5, 5",
                                                             b"99999999999999999999", b"0x10", b"", b"\xff"]))
        elif framing == "cl-short":  # fewer bytes declared than sent: the rest reads as a next request
            headers.append(f"Content-Length: {max(len(body) // 2, 0)}".encode())
        elif framing == "cl-long":  # more declared than sent: the body stalls (408)
            headers.append(f"Content-Length: {len(body) + r.randrange(1, 100)}".encode())
        elif framing == "cl-te":
            headers += [cl, b"Transfer-Encoding: chunked"]
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        elif framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
            chunks, rest = [], body
            while rest:
                n = r.randrange(1, 4096)
                chunks.append(f"{len(rest[:n]):x}\r\n".encode() + rest[:n] + b"\r\n")
                rest = rest[n:]
            body = b"".join(chunks) + b"0\r\n\r\n"
        elif framing == "chunked-bad":
            headers.append(b"Transfer-Encoding: chunked")
            body = r.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n",
                             b"3\r\nabcXX0\r\n\r\n", b"-1\r\n\r\n", b"3;ext=\xff\r\nabc\r\n0\r\n\r\n"])
        elif framing == "te-unknown":
            headers.append(b"Transfer-Encoding: " + r.choice([b"gzip", b"chunked, gzip", b"identity", b"gzip, chunked"]))
        elif framing == "pipelined":
            headers = [h for h in headers if not h.startswith(b"Connection")]
            headers.append(cl)
            second = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            return request_line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body + second
        return request_line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def check_answer(resp: Response, head_request: bool) -> str | None:
    """The properties every answer must have; returns what is wrong, or None."""
    if resp.status >= 500:
        return f"status {resp.status}"
    if 400 <= resp.status < 500:
        ctype = resp.header("content-type")
        if ctype is None or not ctype.startswith("application/json"):
            return f"status {resp.status} with content-type {ctype!r} (body {resp.body[:80]!r})"
        if head_request:
            return None
        try:
            err = json.loads(resp.body)["error"]
            if not isinstance(err["code"], str) or not isinstance(err["message"], str) or not err["message"]:
                return f"status {resp.status}: error fields of the wrong type: {resp.body[:120]!r}"
        except (ValueError, KeyError, TypeError):
            return f"status {resp.status}: body is not the error shape: {resp.body[:120]!r}"
    return None


def run_case(host: str, port: int, kind: str, raw: bytes, timeout: float) -> dict:
    result = {"kind": kind, "answers": [], "outcome": None, "violation": None}
    head_request = raw.startswith(b"HEAD ")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            try:
                sock.sendall(raw)
            except OSError as e:  # the server may answer and close before reading everything
                result["send_error"] = e.errno
            buf = bytearray()
            while True:
                try:
                    resp = read_response(sock, buf, head_request)
                except Incomplete as e:
                    result["outcome"] = "answered" if result["answers"] else f"closed without an answer ({e})"
                    break
                except socket.timeout:
                    result["outcome"] = "answered" if result["answers"] else "no answer within the timeout"
                    break
                except ConnectionResetError:
                    result["outcome"] = "answered" if result["answers"] else "reset without an answer"
                    break
                except ValueError as e:
                    result["outcome"] = "unparseable answer"
                    result["violation"] = f"unparseable answer: {e}"
                    break
                if resp.status < 200:
                    continue
                bad = check_answer(resp, head_request)
                code = None
                if 400 <= resp.status < 500 and bad is None and not head_request:
                    code = json.loads(resp.body)["error"]["code"]
                result["answers"].append((resp.status, code))
                if bad and not result["violation"]:
                    result["violation"] = bad
                if resp.header("connection") == "close":
                    result["outcome"] = "answered"
                    break
                sock.settimeout(0.3)  # a pipelined second request may have a second answer
    except ConnectionRefusedError:
        result["outcome"] = "connection refused"
        result["violation"] = "connection refused: is the daemon still running?"
    except OSError as e:
        result["outcome"] = f"socket error {e.errno}"
    return result


def cmd_fuzz(args: argparse.Namespace) -> None:
    raise_nofile()
    vocabulary = []
    if args.queries:
        with open(args.queries, encoding="utf-8") as f:
            vocabulary = sorted({w for line in f for w in line.split()})
    rng = random.Random(args.seed)
    fuzzer = Fuzzer(rng, vocabulary)
    cases = [fuzzer.request() for _ in range(args.cases)]
    statuses: dict[str, int] = {}
    codes: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    violations = []
    unanswered = []
    unanswered_by_kind: dict[str, int] = {}
    violations_by_kind: dict[str, int] = {}
    status_by_kind: dict[str, dict[str, int]] = {}
    t0 = time.monotonic()
    done = 0
    lock = threading.Lock()

    def work(case):
        return case, run_case(args.host, args.port, case[0], case[1], args.timeout)

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for (kind, raw), result in pool.map(work, cases):
            with lock:
                done += 1
                kinds[kind] = kinds.get(kind, 0) + 1
                outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
                for status, code in result["answers"]:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    by_kind = status_by_kind.setdefault(kind, {})
                    by_kind[str(status)] = by_kind.get(str(status), 0) + 1
                    if code:
                        codes[code] = codes.get(code, 0) + 1
                if result["outcome"] != "answered":
                    unanswered_by_kind[kind] = unanswered_by_kind.get(kind, 0) + 1
                if result["outcome"] != "answered" and len(unanswered) < args.examples:
                    unanswered.append({"kind": kind, "outcome": result["outcome"],
                                       "request": raw[:300].decode("latin-1"), "request_bytes": len(raw)})
                if result["violation"]:
                    violations_by_kind[kind] = violations_by_kind.get(kind, 0) + 1
                    violations.append({"kind": kind, "violation": result["violation"],
                                       "request": raw[:300].decode("latin-1"), "request_bytes": len(raw)})
            if args.progress and done % 5000 == 0:
                print(f"fuzz: {done} cases, {len(violations)} violations", file=sys.stderr)
    elapsed = time.monotonic() - t0
    by_violation: dict[str, int] = {}
    for v in violations:
        key = v["violation"].split(" (body")[0]
        by_violation[key] = by_violation.get(key, 0) + 1
    # hyper answers requests it cannot parse itself (400, 414, 431), before the router: an
    # empty body, no content-type.
    protocol_level = sum(1 for v in violations if v["violation"].endswith("content-type None (body b'')"))
    emit(
        {
            "cases": len(cases),
            "seconds": round(elapsed, 1),
            "kinds": kinds,
            "statuses": statuses,
            "error_codes": codes,
            "outcomes": outcomes,
            "answers_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "violations": len(violations),
            "violations_by_what": by_violation,
            "violations_empty_body_no_content_type": protocol_level,
            "status_by_kind": status_by_kind,
            "violation_examples": violations[: args.examples],
            "unanswered_examples": unanswered,
            "unanswered_by_kind": unanswered_by_kind,
            "violations_by_kind": violations_by_kind,
        },
        args.out,
    )


# ---------------------------------------------------------------------------------------------
# load: keep-alive connections with a per-connection version check
# ---------------------------------------------------------------------------------------------


class LoadStats:
    def __init__(self):
        self.by_route: dict[str, dict[str, int]] = {}
        self.latencies_ms: list[float] = []
        self.failures: dict[str, int] = {}
        self.failure_examples: list[str] = []
        self.version_regressions = 0
        self.regression_examples: list[str] = []
        self.versions_seen: set[str] = set()
        self.requests = 0
        self.reconnects = 0

    def fail(self, what: str, example: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1
        if len(self.failure_examples) < 10:
            self.failure_examples.append(example)


def make_requests(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    rng = random.Random(args.seed)
    queries = []
    if args.queries:
        with open(args.queries, encoding="utf-8") as f:
            queries = [line.strip() for line in f if line.strip()]
    queries = queries or WORDS
    out = []
    mix = args.mix.split(",")
    for i in range(4096):
        route = mix[i % len(mix)]
        if route == "search":
            body = json.dumps({"query_text": rng.choice(queries), "top_k": 10}).encode()
            raw = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif route == "items":
            raw = f"GET /items/item-{rng.randrange(1, args.items + 1):06d} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        elif route == "batch":
            ids = [f"item-{rng.randrange(1, args.items + 1):06d}" for _ in range(20)]
            body = json.dumps({"ids": ids}).encode()
            raw = (b"POST /items/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif route in ("status", "metrics", "livez", "readyz"):
            raw = f"GET /{route} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        else:
            raise SystemExit(f"load: unknown route {route!r} in --mix")
        out.append((route, raw))
    rng.shuffle(out)
    return out


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    return status, headers, body


async def load_connection(idx: int, args, requests, stats: LoadStats, deadline: float, interval: float) -> None:
    pos = (idx * 7919) % len(requests)
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(args.host, args.port)
        except OSError as e:
            stats.fail("connect", f"conn {idx}: connect: {e}")
            await asyncio.sleep(0.1)
            continue
        last_version = -1
        try:
            while time.monotonic() < deadline:
                route, raw = requests[pos]
                pos = (pos + 1) % len(requests)
                t0 = time.perf_counter()
                writer.write(raw)
                await writer.drain()
                status, headers, body = await asyncio.wait_for(read_answer(reader), args.timeout)
                stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
                stats.requests += 1
                by = stats.by_route.setdefault(route, {})
                by[str(status)] = by.get(str(status), 0) + 1
                if status != 200 and not (status == 404 and route == "items" and args.allow_404):
                    stats.fail(f"{route} {status}", f"conn {idx}: {route} -> {status} {body[:200]!r}")
                version = headers.get("x-data-version")
                if version is None:
                    stats.fail("no x-data-version", f"conn {idx}: {route} -> {status} without x-data-version")
                else:
                    stats.versions_seen.add(version)
                    if int(version) < last_version:
                        stats.version_regressions += 1
                        if len(stats.regression_examples) < 10:
                            stats.regression_examples.append(f"conn {idx}: {route}: version {version} after {last_version}")
                    last_version = max(last_version, int(version))
                if headers.get("connection") == "close":
                    break
                if interval:
                    next_at += interval
                    pause = next_at - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    else:
                        next_at = time.monotonic()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            stats.fail(type(e).__name__, f"conn {idx}: {type(e).__name__}: {e}")
        finally:
            writer.close()
        stats.reconnects += 1


async def load_main(args) -> dict:
    requests = make_requests(args)
    stats = LoadStats()
    t0 = time.monotonic()
    deadline = t0 + args.duration
    interval = args.conns / args.rate if args.rate else 0.0
    await asyncio.gather(*(load_connection(i, args, requests, stats, deadline, interval) for i in range(args.conns)))
    elapsed = time.monotonic() - t0
    return {
        "conns": args.conns,
        "seconds": round(elapsed, 1),
        "requests": stats.requests,
        "rps": round(stats.requests / elapsed, 1),
        "by_route": stats.by_route,
        "failed": sum(stats.failures.values()),
        "failures": stats.failures,
        "failure_examples": stats.failure_examples,
        "version_regressions": stats.version_regressions,
        "regression_examples": stats.regression_examples,
        "versions_seen": len(stats.versions_seen),
        "min_version": min((int(v) for v in stats.versions_seen), default=None),
        "max_version": max((int(v) for v in stats.versions_seen), default=None),
        "reconnects_after_first": stats.reconnects - args.conns,
        "p50_ms": percentile(stats.latencies_ms, 50),
        "p99_ms": percentile(stats.latencies_ms, 99),
    }


def cmd_load(args: argparse.Namespace) -> None:
    raise_nofile()
    emit(asyncio.run(load_main(args)), args.out)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("changes", help="a deterministic changes file")
    p.add_argument("--out", required=True)
    p.add_argument("--delta", type=int, required=True, help="delta number (seeds the changes)")
    p.add_argument("--n", type=int, required=True, help="number of changes")
    p.add_argument("--items", type=int, default=10000, help="bundle items item-000001..N")
    p.add_argument("--seed", default="hardening")
    p.add_argument("--prefix", default="added", help="prefix of added ids")
    p.add_argument("--delete-share", type=float, default=0.15)
    p.add_argument("--no-deletes", action="store_true")
    p.add_argument("--text-words", type=int, default=0, help="extra words of text per put")
    p.set_defaults(func=cmd_changes)

    p = sub.add_parser("model", help="expected digests after each delta")
    p.add_argument("--corpus", required=True)
    p.add_argument("--changes", nargs="*", default=[])
    p.add_argument("--out")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("digest", help="digest of an exported item set")
    p.add_argument("export")
    p.set_defaults(func=cmd_digest)

    p = sub.add_parser("classify", help="old, new or other")
    p.add_argument("--model", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--status", required=True, help="output of `deltacache status --json`")
    p.add_argument("--old", type=int, required=True)
    p.add_argument("--new", type=int, required=True)
    p.set_defaults(func=cmd_classify)

    def server(p):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--out")

    p = sub.add_parser("probe", help="latency of requests on new connections")
    server(p)
    p.add_argument("--path", default="/livez")
    p.add_argument("--search", help="POST /search with this query instead of GET --path")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=5)
    p.add_argument("--stop-file", help="stop early once this file exists")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("slow", help="hold slow connections and time their closes")
    server(p)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--header-trickle", type=int, default=100)
    p.add_argument("--body-trickle", type=int, default=100)
    p.add_argument("--body-stall", type=int, default=0)
    p.add_argument("--duration", type=float, default=30)
    p.set_defaults(func=cmd_slow)

    p = sub.add_parser("fuzz", help="malformed requests over raw sockets")
    server(p)
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--queries", help="a queries file whose words make query texts")
    p.add_argument("--examples", type=int, default=40)
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_fuzz)

    p = sub.add_parser("load", help="keep-alive load with a version check per connection")
    server(p)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--rate", type=float, default=0, help="total requests per second (0: as fast as answered)")
    p.add_argument("--mix", default="search,items")
    p.add_argument("--queries")
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--allow-404", action="store_true", help="GET /items/{id} may answer 404 (deltas delete items)")
    p.set_defaults(func=cmd_load)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
