#!/usr/bin/env bash
# The HTTP API against its contract, run by CI: validates openapi.json with
# openapi-spec-validator, then serves a small bundle with the release binary and fuzzes every
# operation of openapi.json against it with schemathesis (valid and invalid data).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Pinned: a new schemathesis brings new checks and new data; upgrade on purpose.
readonly SCHEMATHESIS_VERSION=4.32.5
readonly SPEC_VALIDATOR_VERSION=0.9.0

usage() {
    cat <<'EOF'
Usage: check_api.sh [--skip-build] [--binary PATH] [--max-examples N] [--seed N] [--keep]

  --skip-build       reuse target/release/deltacache instead of `cargo build --release --locked`
  --binary PATH      serve with this binary (implies --skip-build)
  --max-examples N   schemathesis examples per operation in its fuzzing phase [default: 300]
  --seed N           schemathesis random seed [default: 1; the same seed tries the same data]
  --keep             keep the temporary directory (it is always kept after a failure)
  -h, --help         this text

Installs openapi-spec-validator and schemathesis (pinned) with pip into a venv under
target/check-api-venv (python3 with its venv module is needed; with the CI environment
variable set, a missing python3-venv is installed with apt-get). Then:
  1. openapi-spec-validator openapi.json (OpenAPI 3.1);
  2. `deltacache build-base` of src/demo_catalogue.jsonl (--filter-fields category) and
     `deltacache serve` of it on a free loopback port, waiting for /readyz;
  3. schemathesis run openapi.json against it: every operation, positive and negative data,
     phases examples, coverage and fuzzing, checks `all` but positive_data_acceptance (valid
     data may name a filter field the bundle does not index: a 422, or an id no item has: a
     404, both in the contract).
Prints the examples tried per operation and the failures; exits non-zero on any failure.
Requests hyper cannot parse at all (a malformed request line or header) are answered by
hyper with a bare 400 outside the contract; schemathesis sends well-formed HTTP.
EOF
}

skip_build=false
binary=""
max_examples=300
seed=1
keep=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-build) skip_build=true; shift ;;
        --binary) [[ $# -ge 2 ]] || { echo "check_api.sh: --binary needs a path" >&2; exit 2; }; binary="$2"; skip_build=true; shift 2 ;;
        --max-examples) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "check_api.sh: --max-examples needs a whole number > 0" >&2; exit 2; }; max_examples="$2"; shift 2 ;;
        --seed) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "check_api.sh: --seed needs a whole number" >&2; exit 2; }; seed="$2"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "check_api.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

started_at=$SECONDS
daemon_pid=""
tmp=""
failed=false
cleanup() {
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n "$tmp" ]]; then
        if $keep || $failed; then
            echo "check_api.sh: logs and reports kept in $tmp"
        else
            rm -rf "$tmp"
        fi
    fi
}
trap cleanup EXIT
die() {
    failed=true
    echo "check_api.sh: $*" >&2
    exit 1
}

# --- the tools --------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
command -v curl >/dev/null || die "curl is missing: apt-get install curl"
venv="$repo/target/check-api-venv"
pins=("schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$SPEC_VALIDATOR_VERSION")
if [[ "$(cat "$venv/pins" 2>/dev/null || true)" != "${pins[*]}" ]]; then
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        [[ -n "${CI:-}" ]] || die "python3's venv module is missing: apt-get install python3-venv"
        apt_get=(apt-get)
        [[ $EUID -eq 0 ]] || apt_get=(sudo -n apt-get)
        "${apt_get[@]}" update -q
        DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q --no-install-recommends python3-venv
    fi
    echo "check_api.sh: pip install ${pins[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
    echo "${pins[*]}" >"$venv/pins"
fi

# --- 1. the document --------------------------------------------------------------------
contract="$repo/openapi.json"
[[ -f "$contract" ]] || die "no $contract: regenerate it with UPDATE_EXPECT=1 cargo test --locked --test it openapi::"
"$venv/bin/openapi-spec-validator" "$contract" || die "openapi-spec-validator refused $contract"

# --- 2. a daemon serving a small bundle ---------------------------------------------------
if ! $skip_build; then
    echo "check_api.sh: cargo build --release --locked"
    (cd "$repo" && cargo build --release --locked) || die "cargo build --release --locked failed"
fi
[[ -n "$binary" ]] || binary="$repo/target/release/deltacache"
[[ -x "$binary" ]] || die "no deltacache binary at $binary (run without --skip-build, or pass --binary PATH)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/deltacache-check-api.XXXXXX")"
"$binary" build-base --input "$repo/src/demo_catalogue.jsonl" --out "$tmp/bundle" \
    --filter-fields category >"$tmp/build-base.log" 2>&1 ||
    die "build-base of src/demo_catalogue.jsonl failed (see $tmp/build-base.log)"
RUST_LOG=warn "$binary" serve --bundle "$tmp/bundle" --state-dir "$tmp/state" \
    --listen 127.0.0.1:0 >"$tmp/serve.stdout" 2>"$tmp/serve.stderr" &
daemon_pid=$!

deadline=$((SECONDS + 60))
addr=""
while [[ -z "$addr" ]]; do
    addr="$(sed -n 's|^deltacache: listening on http://||p' "$tmp/serve.stdout" | head -n 1)"
    [[ -n "$addr" ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || die "deltacache serve exited before it listened (see $tmp/serve.stderr)"
    ((SECONDS < deadline)) || die "deltacache serve did not print its address within 60 s"
    sleep 0.1
done
base="http://$addr"
until curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; do
    kill -0 "$daemon_pid" 2>/dev/null || die "deltacache serve exited before it was ready (see $tmp/serve.stderr)"
    ((SECONDS < deadline)) || die "$base/readyz did not answer 200 within 60 s"
    sleep 0.1
done
echo "check_api.sh: serving src/demo_catalogue.jsonl on $base"

# --- 3. schemathesis ----------------------------------------------------------------------
status=0
# From the temporary directory: schemathesis keeps a cache (.schemathesis/) where it runs.
(cd "$tmp" && "$venv/bin/schemathesis" run "$contract" --url "$base" \
    --phases examples,coverage,fuzzing --mode all \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$max_examples" --seed "$seed" --workers 1 \
    --request-timeout 10 --no-color \
    --report ndjson --report-ndjson-path "$tmp/events.ndjson") || status=$?

python3 - "$tmp/events.ndjson" <<'EOF' || status=1
# One line per operation from schemathesis's event stream: the examples (test cases) it
# tried, valid and invalid, the requests sent, and the failed checks.
import collections
import json
import sys

tried = collections.defaultdict(collections.Counter)
failures = []
for line in open(sys.argv[1]):
    event = json.loads(line)
    finished = event.get("ScenarioFinished")
    if not finished:
        continue
    recorder = finished["recorder"]
    label = recorder["label"]
    for case in recorder.get("cases", {}).values():
        mode = case["value"].get("meta", {}).get("generation", {}).get("mode", "explicit")
        tried[label][mode] += 1
        tried[label]["cases"] += 1
    tried[label]["requests"] += len(recorder.get("interactions", {}))
    for case_id, checks in recorder.get("checks", {}).items():
        for check in checks:
            if check["status"] == "failure":
                failures.append(f"{label}: {check['name']} (case {case_id})")
                tried[label]["failures"] += 1
total = collections.Counter()
for label in sorted(tried):
    counts = tried[label]
    total.update(counts)
    print(
        f"check_api.sh: {label:22} {counts['cases']:5} examples "
        f"({counts['positive']} valid, {counts['negative']} invalid), "
        f"{counts['requests']} requests, {counts['failures']} failures"
    )
print(
    f"check_api.sh: {len(tried)} operations, {total['cases']} examples, "
    f"{total['requests']} requests, {total['failures']} failures"
)
for failure in failures:
    print(f"check_api.sh: FAILED {failure}")
sys.exit(1 if failures or not tried else 0)
EOF

kill -0 "$daemon_pid" 2>/dev/null || { echo "check_api.sh: the daemon died during the run (see $tmp/serve.stderr)" >&2; status=1; }
if [[ $status -ne 0 ]]; then
    failed=true
    echo "check_api.sh: FAILED after $((SECONDS - started_at)) s"
    exit 1
fi
echo "check_api.sh: ok: openapi.json is valid and the daemon kept to it ($((SECONDS - started_at)) s)"
