#!/usr/bin/env bash
# Fleet freshness: how long after `publish-delta` returns a delta is served by every instance
# of a local fleet (the figures in BENCHMARKS.md, "Fleet: publish to served").
#
#   scripts/bench_fleet.sh --binary PATH [--instances N] [--deltas D] [--every SECS]
#                          [--items I] [--changes C] [--status-poll-ms MS]
#                          [--scenarios "file s3:1s s3:10s"] [--out DIR]
#
# One bundle of I items (default 10,000, scripts/gen_corpus.py --seed 42), one TUF repository
# per scenario (root init with a root key, a targets key and an online key; repo init;
# publish-delta --key targets --key online, as scripts/rehearse_boot.sh sets it up), and N
# instances (default 5): `deltacache serve` each with its own state dir, its own
# --instance-seed (0, 409, 819, ...), the one shared store and the one trusted root, HTTP on
# 127.0.0.1:0 (the address is read from the line "deltacache: listening on http://ADDR" the
# daemon prints). Once every instance is ready at the bundle's seq, D deltas (default 50) of
# C updated items each (default 10) are published one after the other at a steady rhythm, one
# every SECS seconds (default 2; the next one starts at once when a publish took longer),
# without waiting for the instances.
#
# What is measured, per instance and per delta: the time from `publish-delta` returning to the
# first answer of that instance's /status whose seq is at least the delta's. Each instance's
# /status is read every MS milliseconds (default 20) over one kept-alive connection, so a
# figure is late by at most MS plus one /status round trip. It can be negative: with a
# directory watch an instance may serve the delta before the publishing process has exited.
# Also recorded: the daemon's own `sync.publish_to_serve_seconds` at each swap (publish time
# in the delta's signed metadata to the swap; only the newest delta of a swap shows there),
# `publish-delta`'s wall-clock time, and each daemon's CPU time over the run.
#
# Scenarios (default all three):
#   file     a file:// store, followed by the daemons' watch of its metadata directory (the
#            default for a file store; --follow-interval left at its default of 60 s);
#   s3:T     an S3 store on loopback, polled every T (--follow-interval T): moto_server 5.2.5
#            (PyPI moto[server]), installed by this script into OUT/venv, on a port the OS
#            chooses (moto_server -p 0 prints it), one fresh server per scenario.
# Results: OUT/results.md (p50/p90/p99/max per scenario), OUT/samples.tsv (every sample),
# OUT/swaps.tsv, OUT/<scenario>/ (logs, state dirs, metrics scraped at the end).
set -euo pipefail

BIN=
INSTANCES=5
DELTAS=50
EVERY=2
ITEMS=10000
CHANGES=10
POLL_MS=20
SCENARIOS="file s3:1s s3:10s"
OUT=target/bench/fleet
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) BIN=$2; shift 2 ;;
        --instances) INSTANCES=$2; shift 2 ;;
        --deltas) DELTAS=$2; shift 2 ;;
        --every) EVERY=$2; shift 2 ;;
        --items) ITEMS=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --status-poll-ms) POLL_MS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $BIN ]] || { echo "give --binary PATH (a release build of deltacache; see --help)" >&2; exit 2; }
[[ -x $BIN ]] || { echo "--binary $BIN is not an executable file" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd -P)
echo "## $("$BIN" --version); $INSTANCES instances; $DELTAS deltas of $CHANGES changes, one every ${EVERY} s; $ITEMS items; /status read every $POLL_MS ms"

# --- the bundle, the keys, the root, the changes ----------------------------------------------
CORPUS=$OUT/items-$ITEMS.jsonl
[[ -f $CORPUS ]] || python3 scripts/gen_corpus.py --n "$ITEMS" --seed 42 --out "$CORPUS" > /dev/null
BUNDLE=$OUT/bundle-$ITEMS
if [[ ! -f $BUNDLE.done ]]; then
    rm -rf "$BUNDLE"
    RUST_LOG=error "$BIN" build-base --input "$CORPUS" --dataset items --out "$BUNDLE" > /dev/null
    touch "$BUNDLE.done"
fi
KEYS=$OUT/keys
if [[ ! -f $KEYS/root.json ]]; then
    rm -rf "$KEYS"
    mkdir -p "$KEYS"
    chmod 0700 "$KEYS"
    for key in root targets online; do "$BIN" keygen --out "$KEYS/$key.key" > /dev/null; done
    "$BIN" root init --out "$KEYS/root.json" --root-key "$KEYS/root.key.pub" \
        --targets-key "$KEYS/targets.key.pub" --online-key "$KEYS/online.key.pub" \
        --sign-with "$KEYS/root.key" > /dev/null
fi
CHANGES_DIR=$OUT/changes-$ITEMS-$DELTAS-$CHANGES
if [[ ! -f $CHANGES_DIR/done ]]; then
    mkdir -p "$CHANGES_DIR"
    # Delta k updates C items chosen at random (seed k): each gets a text made of two other
    # items' texts, so its words are in the model's vocabulary.
    python3 - "$CORPUS" "$CHANGES_DIR" "$DELTAS" "$CHANGES" <<'PY'
import json, random, sys
corpus, out, deltas, changes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
items = [json.loads(line) for line in open(corpus, encoding="utf-8") if line.strip()]
for k in range(1, deltas + 1):
    rng = random.Random(k)
    with open(f"{out}/changes-{k}.jsonl", "w", encoding="utf-8") as f:
        for item in rng.sample(items, changes):
            a, b = rng.sample(items, 2)
            put = dict(item, text=f"{a['text']} {b['text']}")
            f.write(json.dumps({"op": "put", "item": put}) + "\n")
PY
    touch "$CHANGES_DIR/done"
fi

# --- an S3 server on loopback -------------------------------------------------------------
VENV=$OUT/venv
MOTO_PID=
MOTO_LOG_PID=
stop_moto() {
    local pid
    for pid in $MOTO_PID $MOTO_LOG_PID; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    MOTO_PID=
    MOTO_LOG_PID=
}
trap stop_moto EXIT
# start_moto LOG: starts moto_server on a port the OS chooses (-p 0) and reads the port from
# the line it prints; sets S3_ENDPOINT. Its output goes through a fifo held open read-write
# here (so neither side ever blocks on the other's open), read line by line until that line,
# then copied to LOG by a `cat` that lives as long as the server.
start_moto() {
    local log=$1 fifo line addr=''
    if [[ ! -x $VENV/bin/moto_server ]]; then
        echo "installing moto[server]==5.2.5 into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'moto[server]==5.2.5'
    fi
    fifo=$(mktemp -u "$OUT/moto-fifo.XXXXXX")
    mkfifo "$fifo"
    exec 3<> "$fifo"
    rm -f "$fifo"
    PYTHONUNBUFFERED=1 "$VENV/bin/moto_server" -H 127.0.0.1 -p 0 >&3 2>&3 3>&- &
    MOTO_PID=$!
    while IFS= read -r -t 60 -u 3 line; do
        printf '%s\n' "$line" >> "$log"
        if [[ $line =~ Running\ on\ http://(127\.0\.0\.1:[0-9]+) ]]; then
            addr=${BASH_REMATCH[1]}
            break
        fi
    done
    cat <&3 >> "$log" 3>&- &
    MOTO_LOG_PID=$!
    exec 3>&-
    [[ -n $addr ]] || { echo "moto_server did not say where it listens (see $log)" >&2; exit 1; }
    S3_ENDPOINT=http://$addr
}

# --- the scenarios --------------------------------------------------------------------------
: > "$OUT/samples.tsv"
: > "$OUT/swaps.tsv"
: > "$OUT/runs.tsv"
for scenario in $SCENARIOS; do
    name=${scenario//:/-}
    dir=$OUT/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    interval=
    case "$scenario" in
        file)
            store_url=file://$dir/store
            ;;
        s3:*)
            interval=${scenario#s3:}
            start_moto "$dir/moto.log"
            export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
                AWS_ENDPOINT_URL=$S3_ENDPOINT AWS_EC2_METADATA_DISABLED=true
            "$VENV/bin/python" -c 'import boto3, os; boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="fleet")'
            store_url=s3://fleet/$name
            ;;
        *) echo "unknown scenario $scenario (file, or s3:INTERVAL such as s3:1s)" >&2; exit 2 ;;
    esac
    "$BIN" repo init --store "$store_url" --root "$KEYS/root.json" \
        --key "$KEYS/targets.key" --key "$KEYS/online.key" > "$dir/repo-init.log" 2>&1 ||
        { echo "repo init --store $store_url failed (see $dir/repo-init.log)" >&2; exit 1; }
    echo "### $scenario: $store_url${interval:+, --follow-interval $interval}${S3_ENDPOINT:+ (moto_server at $S3_ENDPOINT)}"
    python3 - "$scenario" "$dir" "$BIN" "$BUNDLE" "$KEYS" "$store_url" "$interval" "$INSTANCES" \
        "$DELTAS" "$EVERY" "$CHANGES_DIR" "$POLL_MS" "$OUT" <<'PY'
import http.client, json, os, re, signal, subprocess, sys, threading, time

(scenario, d, binary, bundle, keys, store, interval, instances, deltas, every, changes,
 poll_ms, out) = sys.argv[1:]
instances, deltas, every, poll = int(instances), int(deltas), float(every), int(poll_ms) / 1000
now_ms = lambda: time.time() * 1000.0

class Instance:
    def __init__(self, i):
        self.i, self.addr, self.listening = i, None, threading.Event()
        self.seen = {}       # seq -> ms of the first /status answer at or past it
        self.swaps = []      # (ms, seq, publish_to_serve_seconds)
        self.seq = None
        cmd = [binary, "serve", "--bundle", bundle, "--state-dir", f"{d}/state-{i}",
               "--store", store, "--trusted-root", f"{keys}/root.json",
               "--listen", "127.0.0.1:0", "--instance-seed", str(i * 2048 // instances)]
        if interval:
            cmd += ["--follow-interval", interval]
        self.stderr = open(f"{d}/serve-{i}.stderr", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=dict(os.environ, RUST_LOG="info,tower_http=warn"), text=True)
        threading.Thread(target=self.read_stdout, daemon=True).start()

    def read_stdout(self):
        with open(f"{d}/serve-{self.i}.stdout", "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                m = re.match(r"deltacache: listening on http://(\S+)", line)
                if m and not self.addr:
                    self.addr = m.group(1)
                    self.listening.set()
        self.listening.set()

    def get(self, conn, path):
        for attempt in (1, 2):  # once more on a fresh connection if the kept one was closed
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                if attempt == 2:
                    raise

    def wait_ready(self, deadline):
        if not self.listening.wait(max(0, deadline - time.time())) or not self.addr:
            sys.exit(f"instance {self.i} did not print its address (see {d}/serve-{self.i}.stderr)")
        conn = http.client.HTTPConnection(self.addr, timeout=10)
        stop = threading.Event()
        while time.time() < deadline:
            if self.get(conn, "/readyz")[0] == 200:
                return
            stop.wait(0.05)  # a readiness probe, at a steady rate
        sys.exit(f"instance {self.i} not ready (see {d}/serve-{self.i}.stderr)")

    def watch(self, stop, changed):
        conn = http.client.HTTPConnection(self.addr, timeout=10)
        while not stop.is_set():
            try:
                _, body = self.get(conn, "/status")
            except (http.client.HTTPException, OSError):
                if stop.is_set():
                    return
                raise
            t = now_ms()
            status = json.loads(body)
            seq = status.get("seq")
            if seq is not None and (self.seq is None or seq > self.seq):
                for k in range((self.seq if self.seq is not None else seq) + 1, seq + 1):
                    self.seen.setdefault(k, t)
                self.swaps.append((t, seq, status.get("sync", {}).get("publish_to_serve_seconds")))
                self.seq = seq
                with changed:
                    changed.notify_all()
            stop.wait(poll)

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

fleet = [Instance(i) for i in range(instances)]
try:
    boot_deadline = time.time() + 180
    for inst in fleet:
        inst.wait_ready(boot_deadline)
    stop, changed = threading.Event(), threading.Condition()
    watchers = [threading.Thread(target=inst.watch, args=(stop, changed), daemon=True) for inst in fleet]
    for w in watchers:
        w.start()
    with changed:
        if not changed.wait_for(lambda: all(inst.seq is not None for inst in fleet), timeout=30):
            sys.exit("an instance's /status shows no seq")
    base = {inst.seq for inst in fleet}
    if len(base) != 1:
        sys.exit(f"instances start at different seqs: {base}")
    base = base.pop()
    cpu_before = [inst.cpu_seconds() for inst in fleet]

    published = {}  # seq -> (start ms, end ms)
    pace = threading.Event()
    t0 = time.time() + 0.5
    for k in range(1, deltas + 1):
        pace.wait(max(0, t0 + (k - 1) * every - time.time()))  # the publishing rhythm
        start = now_ms()
        with open(f"{d}/publish.log", "a") as log:
            done = subprocess.run([binary, "publish-delta", "--store", store,
                                   "--key", f"{keys}/targets.key", "--key", f"{keys}/online.key",
                                   "--trusted-root", f"{keys}/root.json", "--bundle", bundle,
                                   "--changes", f"{changes}/changes-{k}.jsonl"],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, RUST_LOG="warn"))
        if done.returncode != 0:
            tail = open(f"{d}/publish.log").read().splitlines()[-5:]
            sys.exit(f"publish-delta of delta {k} failed (exit {done.returncode}):\n" + "\n".join(tail))
        published[base + k] = (start, now_ms())
    last_publish_end = now_ms()
    head = base + deltas
    settle = 60 + 3 * (float(interval[:-1]) if interval.endswith("s") else 60)
    with changed:
        caught_up = changed.wait_for(lambda: all(inst.seq >= head for inst in fleet), timeout=settle)
    stop.set()
    for w in watchers:
        w.join()
    cpu = [after - before for after, before in zip((inst.cpu_seconds() for inst in fleet), cpu_before)]
    for inst in fleet:
        conn = http.client.HTTPConnection(inst.addr, timeout=10)
        _, metrics = inst.get(conn, "/metrics")
        with open(f"{d}/metrics-{inst.i}.txt", "wb") as f:
            f.write(metrics)
        with open(f"{d}/status-{inst.i}.json", "wb") as f:
            f.write(inst.get(conn, "/status")[1])
finally:
    if "stop" in globals():
        stop.set()  # the watchers first, so that they do not report the daemons' exit
    for inst in fleet:
        if inst.proc.poll() is None:
            inst.proc.send_signal(signal.SIGTERM)
    for inst in fleet:
        try:
            inst.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            inst.proc.kill()
            inst.proc.wait()

with open(f"{out}/samples.tsv", "a") as f:
    for seq, (start, end) in sorted(published.items()):
        for inst in fleet:
            seen = inst.seen.get(seq)
            f.write(f"{scenario}\t{seq}\t{inst.i}\t{start:.1f}\t{end:.1f}\t"
                    f"{'' if seen is None else f'{seen:.1f}'}\n")
with open(f"{out}/swaps.tsv", "a") as f:
    for inst in fleet:
        for t, seq, pts in inst.swaps:
            f.write(f"{scenario}\t{inst.i}\t{t:.1f}\t{seq}\t{'' if pts is None else pts}\n")
span = (last_publish_end - published[base + 1][0]) / 1000
with open(f"{out}/runs.tsv", "a") as f:
    f.write(f"{scenario}\t{span:.1f}\t{','.join(f'{c:.2f}' for c in cpu)}\t{int(caught_up)}\n")
print(f"published {deltas} deltas in {span:.1f} s; every instance at seq {head}: "
      f"{'yes' if caught_up else 'NO'}; daemon CPU s over the run: {', '.join(f'{c:.2f}' for c in cpu)}")
PY
    stop_moto
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL AWS_EC2_METADATA_DISABLED S3_ENDPOINT
done

# --- the figures ------------------------------------------------------------------------------
echo "## publish-delta returned → the instance's /status shows the seq (s), every instance × every delta"
python3 - "$OUT" <<'PY' | tee "$OUT/results.md"
import collections, math, statistics, sys
out = sys.argv[1]
def pct(values, p):  # nearest rank
    values = sorted(values)
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]
lat, pub, missing, order = collections.defaultdict(list), collections.defaultdict(list), collections.Counter(), []
seen_pub = set()
for line in open(f"{out}/samples.tsv"):
    scenario, seq, inst, start, end, seen = line.rstrip("\n").split("\t")
    if scenario not in order:
        order.append(scenario)
    if (scenario, seq) not in seen_pub:
        seen_pub.add((scenario, seq))
        pub[scenario].append((float(end) - float(start)) / 1000)
    if seen:
        lat[scenario].append((float(seen) - float(end)) / 1000)
    else:
        missing[scenario] += 1
own = collections.defaultdict(list)
for line in open(f"{out}/swaps.tsv"):
    scenario, inst, t, seq, pts = line.rstrip("\n").split("\t")
    if pts:
        own[scenario].append(float(pts))
runs = {}
for line in open(f"{out}/runs.tsv"):
    scenario, span, cpu, caught = line.rstrip("\n").split("\t")
    runs[scenario] = (float(span), [float(c) for c in cpu.split(",")], caught == "1")
print("| scenario | samples (missing) | p50 s | p90 s | p99 s | min s | max s | daemon's own p50 / p99 s (swaps) | publish-delta median s | publishing span s | daemon CPU s, median of instances |")
print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
for s in order:
    v = lat[s]
    o = own[s]
    span, cpu, caught = runs.get(s, (0, [0], False))
    print(f"| {s} | {len(v)} ({missing[s]}) | {pct(v, 50):.3f} | {pct(v, 90):.3f} | {pct(v, 99):.3f} | "
          f"{min(v):.3f} | {max(v):.3f} | {pct(o, 50):.3f} / {pct(o, 99):.3f} ({len(o)}) | "
          f"{statistics.median(pub[s]):.3f} | {span:.1f} | {statistics.median(cpu):.2f} |")
PY
