#!/usr/bin/env bash
# Checks the monitoring shipped in packer/monitoring/ against a real Prometheus and a real
# daemon, run by CI: the alerting rules (promtool check rules, promtool test rules), the
# daemon's live /metrics (promtool check metrics), then a Prometheus on loopback scraping a
# daemon that follows a file:// delta store, through whose HTTP API every dashboard panel's
# query and every alert expression is evaluated.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
monitoring="$repo/packer/monitoring"

usage() {
    cat <<'EOF'
Usage: check_monitoring.sh [--install] [--skip-build] [--binary PATH] [--timeout SECS] [--keep]

  --install        install missing tools with apt-get (prometheus, which brings promtool;
                   curl, jq); also done when the CI environment variable is set
  --skip-build     reuse target/release/deltacache instead of `cargo build --release --locked`
  --binary PATH    check with this deltacache binary (implies --skip-build)
  --timeout SECS   limit for each wait (daemon ready, a scrape, a delta served) [default: 60]
  --keep           keep the temporary directory (it is always kept after a failure)
  -h, --help       this text

Checks, one line each, then `check_monitoring: N passed, M failed in Ss` (non-zero exit on
any failure):
  promtool check rules and promtool test rules on packer/monitoring/alerts.yml and
  alerts_test.yml; dashboard.json is JSON whose panels all use the ${datasource} variable;
  a bundle built from src/demo_catalogue.jsonl, a file:// delta store (a TUF repository) with
  one signed delta, and a daemon following it on a loopback port; some traffic (searches,
  items, a batch, a 404); promtool check metrics on a live /metrics scrape (no problem
  reported); a Prometheus on a free loopback port scraping the daemon every second with the
  rules loaded; a second delta published while it scrapes, then more traffic, both waited for
  through Prometheus's API; every dashboard query ($job and $instance as .*,
  $__rate_interval as 1m) must parse and return at least one number, every alert
  expression must parse, every rule must be healthy and no alert may fire on the healthy
  daemon (but DeltacacheStateDirDiskNearlyFull, pending exactly when the state dir's real
  filesystem is under 10 % free); last, a delta deleting a third of the items, published
  with --force, must make DeltacacheHealthGateRefused fire in that Prometheus.
EOF
}

install_tools=false
[[ -z "${CI:-}" ]] || install_tools=true
skip_build=false
binary=""
timeout_secs=60
keep=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --install) install_tools=true; shift ;;
        --skip-build) skip_build=true; shift ;;
        --binary) [[ $# -ge 2 ]] || { echo "check_monitoring.sh: --binary needs a path" >&2; exit 2; }; binary="$2"; skip_build=true; shift 2 ;;
        --timeout) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "check_monitoring.sh: --timeout needs whole seconds" >&2; exit 2; }; timeout_secs="$2"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "check_monitoring.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# --- tools -------------------------------------------------------------------------------
install_flag=()
! $install_tools || install_flag=(--install)
# Debian's prometheus package enables a prometheus.service; policy-rc.d is not ours to
# change, and without systemd running nothing is started.
"$repo/scripts/apt_tools.sh" --for check_monitoring.sh "${install_flag[@]}" \
    promtool,prometheus=prometheus curl=curl jq=jq python3=python3

n_passed=0
n_failed=0
daemon_pid=""
prometheus_pid=""
tmp=""
started_at=$SECONDS

pass() {
    n_passed=$((n_passed + 1))
    echo "ok   $*"
}
fail() {
    n_failed=$((n_failed + 1))
    echo "FAIL $*"
}
check() { # DESCRIPTION COMMAND...: passes when the command succeeds
    local description="$1"
    shift
    if "$@"; then pass "$description"; else fail "$description"; fi
}
summary() {
    echo "check_monitoring: $n_passed passed, $n_failed failed in $((SECONDS - started_at))s"
}
fatal() { # a step the rest depends on failed: count it, report, stop
    fail "$*"
    [[ -z "$tmp" ]] || echo "check_monitoring.sh: logs and files kept in $tmp"
    summary
    exit 1
}
stop() { # PID: SIGTERM, then SIGKILL if it lingers
    local pid="$1" i
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        [[ $i -lt 50 ]] && sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$prometheus_pid"
    stop "$daemon_pid"
    if [[ -n "$tmp" ]]; then
        if $keep || [[ $n_failed -gt 0 ]]; then
            echo "check_monitoring.sh: files kept in $tmp"
        else
            rm -rf "$tmp"
        fi
    fi
}
trap cleanup EXIT

wait_for() { # DESCRIPTION COMMAND...: polls every 0.1 s until the command succeeds or time runs out
    local description="$1" until=$((SECONDS + timeout_secs))
    shift
    while ! "$@"; do
        if [[ -n "$daemon_pid" ]] && ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "check_monitoring.sh: the daemon exited while waiting for: $description" >&2
            return 1
        fi
        if [[ -n "$prometheus_pid" ]] && ! kill -0 "$prometheus_pid" 2>/dev/null; then
            echo "check_monitoring.sh: prometheus exited while waiting for: $description" >&2
            return 1
        fi
        if [[ $SECONDS -ge $until ]]; then
            echo "check_monitoring.sh: timed out after ${timeout_secs}s waiting for: $description" >&2
            return 1
        fi
        sleep 0.1
    done
}

# --- the rules and the dashboard, offline ------------------------------------------------
echo "check_monitoring.sh: $(promtool --version 2>&1 | head -n 1)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/deltacache-monitoring.XXXXXX")"
work="$tmp/work"
mkdir -p "$work"

if promtool check rules "$monitoring/alerts.yml" >"$work/check-rules.log" 2>&1; then
    pass "promtool check rules alerts.yml: $(grep -o '[0-9]* rules found' "$work/check-rules.log")"
else
    fail "promtool check rules alerts.yml (see $work/check-rules.log)"
fi
# rule_files in the test file are relative to it.
if (cd "$monitoring" && promtool test rules alerts_test.yml) >"$work/test-rules.log" 2>&1; then
    pass "promtool test rules alerts_test.yml: $(grep -c '^  - name:' "$monitoring/alerts_test.yml") tests, $(grep -c 'eval_time:' "$monitoring/alerts_test.yml") evaluations"
else
    fail "promtool test rules alerts_test.yml (see $work/test-rules.log)"
fi
dashboard_is() { # JQ-FILTER: true on dashboard.json
    jq -e "$1" "$monitoring/dashboard.json" >/dev/null
}
check "dashboard.json is JSON with panels, each with a query" \
    dashboard_is '[.panels[] | select(.type != "row")] | length > 0 and all(.targets | length > 0)'
# shellcheck disable=SC2016 # ${datasource} is Grafana's variable, not the shell's
check "every dashboard panel and query uses the \${datasource} variable, no fixed data source uid" \
    dashboard_is '[.. | objects | select(has("datasource")) | .datasource | objects | .uid] | all(. == "${datasource}")'
check "the dashboard's datasource variable is a Prometheus data source" \
    dashboard_is '[.templating.list[] | select(.name == "datasource" and .type == "datasource" and .query == "prometheus")] | length == 1'
check "every alert has severity, summary and description" \
    test "$(grep -c '^      - alert:' "$monitoring/alerts.yml")" -eq "$(grep -c '^          description:' "$monitoring/alerts.yml")" -a \
    "$(grep -c '^      - alert:' "$monitoring/alerts.yml")" -eq "$(grep -c '^          summary:' "$monitoring/alerts.yml")" -a \
    "$(grep -c '^      - alert:' "$monitoring/alerts.yml")" -eq "$(grep -c '^          severity:' "$monitoring/alerts.yml")"

# --- the binary, a bundle, a delta store -------------------------------------------------
if ! $skip_build; then
    echo "check_monitoring.sh: cargo build --release --locked"
    (cd "$repo" && cargo build --release --locked) || fatal "cargo build --release --locked"
fi
[[ -n "$binary" ]] || binary="$repo/target/release/deltacache"
[[ -x "$binary" ]] || fatal "no deltacache binary at $binary (run without --skip-build)"
# A private copy: target/release may be rebuilt while the check runs.
cp "$binary" "$work/deltacache"
dc="$work/deltacache"

keys="$work/keys"
mkdir -p "$keys"
chmod 0700 "$keys"
for key in root targets online; do
    "$dc" keygen --out "$keys/$key.key" >>"$work/setup.log" 2>&1 || fatal "deltacache keygen (see $work/setup.log)"
done
"$dc" root init --out "$work/root.json" --root-key "$keys/root.key.pub" --root-threshold 1 \
    --targets-key "$keys/targets.key.pub" --online-key "$keys/online.key.pub" \
    --sign-with "$keys/root.key" >>"$work/setup.log" 2>&1 || fatal "deltacache root init (see $work/setup.log)"
"$dc" build-base --input "$repo/src/demo_catalogue.jsonl" --dataset demo --out "$work/bundle" \
    >>"$work/setup.log" 2>&1 || fatal "deltacache build-base --input src/demo_catalogue.jsonl (see $work/setup.log)"
store_url="file://$tmp/store"
mkdir -p "$tmp/store"
"$dc" repo init --store "$store_url" --root "$work/root.json" --key "$keys/targets.key" --key "$keys/online.key" \
    >>"$work/setup.log" 2>&1 || fatal "deltacache repo init (see $work/setup.log)"
publish() { # N: publishes a delta putting item monitoring-N
    printf '{"op": "put", "item": {"id": "monitoring-%s", "category": "database", "title": "Monitoring %s", "text": "a replicated key value database for monitoring"}}\n' \
        "$1" "$1" >"$work/changes-$1.jsonl"
    "$dc" publish-delta --store "$store_url" --key "$keys/targets.key" --key "$keys/online.key" \
        --trusted-root "$work/root.json" --bundle "$work/bundle" --changes "$work/changes-$1.jsonl" \
        --expires-in 1h >>"$work/publish.log" 2>&1
}
publish 1 || fatal "deltacache publish-delta (see $work/publish.log)"
pass "a bundle from src/demo_catalogue.jsonl and a file:// delta store with one signed delta"

# --- the daemon --------------------------------------------------------------------------
RUST_LOG=warn "$dc" serve --bundle "$work/bundle" --state-dir "$work/state" --listen 127.0.0.1:0 \
    --store "$store_url" --trusted-root "$work/root.json" --follow-interval 1s \
    >"$work/daemon.stdout" 2>"$work/daemon.stderr" &
daemon_pid=$!
wait_for "the daemon's listening line" grep -q '^deltacache: listening on http://' "$work/daemon.stdout" ||
    fatal "the daemon started (see $work/daemon.stderr)"
daemon_addr="$(sed -n 's|^deltacache: listening on http://||p' "$work/daemon.stdout" | head -n 1)"
base="http://$daemon_addr"
http_code() { # PATH [CURL ARGS...]
    local path="$1"
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$base$path" || true
}
readyz_ok() { [[ "$(http_code /readyz)" == 200 ]]; }
wait_for "/readyz 200" readyz_ok || fatal "the daemon became ready (see $work/daemon.stderr)"
seq_is() { # SEQ: /status serves it
    curl -s --max-time 5 "$base/status" | jq -e ".seq == $1" >/dev/null 2>&1
}
check "the daemon on $daemon_addr is ready and serves delta 1 (seq 1)" wait_for "seq 1" seq_is 1

n_requests=0
traffic() { # a little of everything a client does; counts the data-route requests
    local i code
    for i in 1 2 3 4 5; do
        code="$(http_code /search -X POST -H 'content-type: application/json' \
            -d "{\"query_text\": \"replicated database $i\", \"top_k\": 5}")"
        [[ "$code" == 200 ]] || return 1
        code="$(http_code "/items/demo-000$i")"
        [[ "$code" == 200 ]] || return 1
    done
    [[ "$(http_code /items/monitoring-1)" == 200 ]] || return 1
    [[ "$(http_code /items/batch -X POST -d '{"ids": ["demo-0001", "no-such-item"]}')" == 200 ]] || return 1
    [[ "$(http_code /items/no-such-item)" == 404 ]] || return 1
    n_requests=$((n_requests + 13))
}
check "traffic: 5 searches, 6 item lookups, a batch, a 404" traffic

curl -s --max-time 5 "$base/metrics" >"$work/metrics.txt" || true
if promtool check metrics <"$work/metrics.txt" >"$work/check-metrics.log" 2>&1 && [[ ! -s "$work/check-metrics.log" ]]; then
    pass "promtool check metrics on a live /metrics scrape: no problem ($(grep -c '^# TYPE' "$work/metrics.txt") metrics)"
else
    fail "promtool check metrics on a live /metrics scrape: $(head -c 2000 "$work/check-metrics.log" | tr '\n' ';')"
fi

# --- Prometheus --------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
prometheus_port="$(free_port)"
prom="http://127.0.0.1:$prometheus_port"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $monitoring/alerts.yml
scrape_configs:
  - job_name: deltacache
    static_configs:
      - targets: ["$daemon_addr"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn \
    >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
prom_query() { # PROMQL: prints the API's JSON answer
    curl -s --max-time 5 --get --data-urlencode "query=$1" "$prom/api/v1/query"
}
prom_value_is() { # PROMQL VALUE: the query's first sample equals VALUE
    prom_query "$1" | jq -e --arg v "$2" '.data.result[0].value[1] == $v' >/dev/null 2>&1
}
prometheus_ready() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$prom/-/ready" || true)" == 200 ]]; }
wait_for "prometheus ready on $prom" prometheus_ready || fatal "prometheus started on $prom (see $work/prometheus.log)"
check "prometheus $(prometheus --version 2>&1 | sed -n '1s/^prometheus, version \([^ ]*\).*/\1/p') on $prom scraped the daemon (up == 1)" \
    wait_for "a scrape" prom_value_is 'up{job="deltacache"}' 1

# Drive what the panels show: a delta applied while Prometheus watches (sync, apply,
# publish-to-serve), then traffic, each waited for in Prometheus itself.
publish 2 || fatal "deltacache publish-delta while serving (see $work/publish.log)"
check "a delta published while serving is applied and scraped (deltacache_current_seq 2)" \
    wait_for "seq 2 in prometheus" prom_value_is 'deltacache_current_seq{job="deltacache"}' 2
check "traffic after the delta" traffic
data_requests='sum(deltacache_http_requests_total{job="deltacache", route!~"/livez|/readyz|/metrics|/status"})'
check "prometheus scraped all $n_requests data-route requests" wait_for "$n_requests requests in prometheus" \
    prom_value_is "$data_requests" "$n_requests"
rules_evaluated() { # every rule group evaluated at least once since the last scrape
    curl -s --max-time 5 "$prom/api/v1/rules" | jq -e '[.data.groups[].rules[] | .lastEvaluation] | length > 0 and all(startswith("0001") | not)' >/dev/null 2>&1
}
wait_for "the rules evaluated" rules_evaluated || true

# --- every dashboard query and alert expression through the API -------------------------
python3 - "$monitoring/dashboard.json" "$prom" >"$work/evaluate.out" 2>&1 <<'PY' || true
import json, math, sys, urllib.parse, urllib.request

dashboard, prom = sys.argv[1], sys.argv[2]

def api(path, **params):
    url = prom + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:  # 400 for a query that does not parse
        return json.load(error)

def numbers(result):
    """The finite numbers a query's result holds."""
    if result["resultType"] == "scalar":
        values = [result["result"][1]]
    else:
        values = [sample["value"][1] for sample in result["result"]]
    return [float(v) for v in values if math.isfinite(float(v))]

def substitute(expr):
    return (expr.replace("$__rate_interval", "1m").replace("${datasource}", "")
            .replace("$job", ".*").replace("$instance", ".*"))

def panels(node):
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)

n_ok = n_data = n_queries = 0
for panel in panels(json.load(open(dashboard))):
    for target in panel.get("targets", []):
        n_queries += 1
        expr = substitute(target["expr"])
        answer = api("/api/v1/query", query=expr)
        name = f"panel {panel['title']!r} query {target['refId']}"
        if answer.get("status") != "success":
            print(f"FAIL {name} does not evaluate: {answer.get('error')}: {expr}")
            continue
        n_ok += 1
        found = numbers(answer["data"])
        if found:
            n_data += 1
            print(f"ok   {name}: {len(found)} series, e.g. {found[0]:g}")
        else:
            print(f"FAIL {name} returns no data (no series, or only NaN): {expr}")

rules = [r for g in api("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
n_alerts = n_alerts_ok = 0
for rule in rules:
    n_alerts += 1
    answer = api("/api/v1/query", query=rule["query"])
    if answer.get("status") == "success" and rule.get("health") == "ok":
        n_alerts_ok += 1
        print(f"ok   alert {rule['name']}: parses, healthy, {len(answer['data']['result'])} series now ({rule['state']})")
    else:
        print(f"FAIL alert {rule['name']}: {answer.get('error') or rule.get('lastError')}")
# The disk alert watches the machine's real filesystem: pending when it is under 10 % free
# (it fires only after 10 minutes), silent otherwise. Every other alert stays silent.
free = numbers(api("/api/v1/query", query="deltacache_state_dir_filesystem_available_bytes / deltacache_state_dir_filesystem_size_bytes")["data"])
disk_alert = "DeltacacheStateDirDiskNearlyFull"
active = [a["labels"]["alertname"] + " " + a["state"] for a in api("/api/v1/alerts")["data"]["alerts"]]
expected = [f"{disk_alert} pending"] if free and free[0] < 0.10 else []
others = [a for a in active if not a.startswith(disk_alert + " ")]
print(("ok   " if not others else "FAIL ") + f"no alert pending or firing on the healthy daemon{': ' + ', '.join(others) if others else ''}")
disk_active = [a for a in active if a.startswith(disk_alert + " ")]
state = ", ".join(disk_active) or f"{disk_alert} silent"
print(("ok   " if disk_active == expected else "FAIL ") + f"{state}, the state dir's filesystem being {free[0] if free else float('nan'):.1%} free (the alert: under 10 % for 10 minutes)")
print(f"SUMMARY {n_queries} {n_ok} {n_data} {n_alerts} {n_alerts_ok}")
PY
while IFS= read -r line; do
    case "$line" in
        "ok   "*) pass "${line#ok   }" ;;
        "FAIL "*) fail "${line#FAIL }" ;;
        "SUMMARY "*)
            read -r _ n_queries n_parsed n_data n_alerts n_alerts_ok <<<"$line"
            echo "check_monitoring.sh: $n_queries dashboard queries ($n_parsed parse, $n_data return data), $n_alerts alert expressions ($n_alerts_ok parse)" ;;
        *) fail "evaluating the queries: $line" ;;
    esac
done <"$work/evaluate.out"
grep -q '^SUMMARY ' "$work/evaluate.out" || fail "the dashboard queries and alert expressions were evaluated (see $work/evaluate.out)"

# One alert end to end: a delta removing a third of the items, published with --force past
# publish-delta's own count check, is refused by the instance's health gate (at most 25 %
# removed by default); DeltacacheHealthGateRefused must fire with reason removed, and the
# daemon keep serving seq 2.
python3 -c 'import json
for i in range(1, 101):
    print(json.dumps({"op": "delete", "id": f"demo-{i:04d}"}))' >"$work/changes-3.jsonl"
if "$dc" publish-delta --store "$store_url" --key "$keys/targets.key" --key "$keys/online.key" \
    --trusted-root "$work/root.json" --bundle "$work/bundle" --changes "$work/changes-3.jsonl" \
    --expires-in 1h --force >>"$work/publish.log" 2>&1; then
    gate_alert_fires() {
        curl -s --max-time 5 "$prom/api/v1/alerts" | jq -e '[.data.alerts[] | select(.labels.alertname == "DeltacacheHealthGateRefused" and .labels.reason == "removed" and .state == "firing")] | length == 1' >/dev/null 2>&1
    }
    check "a delta removing a third of the items: DeltacacheHealthGateRefused fires (reason removed) in prometheus" \
        wait_for "DeltacacheHealthGateRefused firing" gate_alert_fires
    check "the daemon keeps serving seq 2 after the refusal" seq_is 2
else
    fail "deltacache publish-delta --force of a delta deleting 100 items (see $work/publish.log)"
fi

summary
[[ $n_failed -eq 0 ]]
