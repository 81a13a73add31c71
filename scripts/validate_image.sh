#!/usr/bin/env bash
# Offline validation of the image definition, run by CI: the Packer template (format and
# validate), the systemd unit (systemd-analyze verify and its hardening), the shipped config
# (the binary loads it and serves), and shellcheck on every script. No AWS call, no image.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: validate_image.sh [--install] [--binary PATH] [--keep]

  --install      install missing tools with apt-get (packer, shellcheck, systemd); also
                 done when the CI environment variable is set
  --binary PATH  the deltacache binary to check the unit and the config with
                 [default: target/release/deltacache]
  --keep         keep the temporary directory
  -h, --help     this text

Checks, one line each, then `validate_image: N passed, M failed` (non-zero exit on any
failure):
  packer fmt -check on packer/, and packer validate of packer/deltacache.pkr.hcl with dummy
  artefacts (Packer checks that file-provisioner sources exist; a missing one must fail);
  systemd-analyze verify on a copy of packer/deltacache.service whose ExecStart points at a
  temporary copy of the binary (any warning fails), the unit's hardening and its agreement
  with packer/config.toml; the shipped config loaded by `deltacache serve` with its paths
  moved to a temporary directory; shellcheck on scripts/*.sh; and the shape of the image
  scripts (shebang, set -euo pipefail, --help).
EOF
}

install_tools=false
[[ -z "${CI:-}" ]] || install_tools=true
binary="$repo/target/release/deltacache"
keep=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --install) install_tools=true; shift ;;
        --binary) [[ $# -ge 2 ]] || { echo "validate_image.sh: --binary needs a path" >&2; exit 2; }; binary="$2"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "validate_image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

# --- tools -------------------------------------------------------------------------------
install_flag=()
! $install_tools || install_flag=(--install)
"$repo/scripts/apt_tools.sh" --for validate_image.sh "${install_flag[@]}" packer=packer \
    shellcheck=shellcheck systemd-analyze=systemd curl=curl
[[ -x "$binary" ]] || {
    echo "validate_image.sh: no deltacache binary at $binary: cargo build --release, or pass --binary PATH" >&2
    exit 2
}

n_passed=0
n_failed=0
pass() {
    n_passed=$((n_passed + 1))
    echo "ok   $*"
}
fail() {
    n_failed=$((n_failed + 1))
    echo "FAIL $*"
}
check() { # DESCRIPTION COMMAND...
    local description="$1"
    shift
    if "$@"; then pass "$description"; else fail "$description"; fi
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/deltacache-validate.XXXXXX")"
daemon_pid=""
cleanup() {
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if $keep || [[ $n_failed -gt 0 ]]; then
        echo "validate_image.sh: files kept in $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
started_at=$SECONDS
cp "$binary" "$tmp/deltacache"
echo "validate_image.sh: $(packer version | head -n 1), $(shellcheck --version | sed -n 's/^version: /shellcheck /p'), $(systemd-analyze --version | head -n 1), $("$tmp/deltacache" --version)"

# --- Packer ------------------------------------------------------------------------------
check "packer fmt -check packer/" packer fmt -check -diff "$repo/packer"

dummy="$tmp/artifacts"
mkdir -p "$dummy/bin" "$dummy/bundle" "$dummy/scripts" "$dummy/monitoring"
for f in bin/deltacache bundle/manifest.json config.toml root.json deltacache.service scripts/provision.sh monitoring/alerts.yml; do
    echo "dummy artefact for packer validate" >"$dummy/$f"
done
packer_vars() { # ARTEFACTS-DIR
    printf '%s\n' \
        -var "binary_path=$1/bin/deltacache" -var "bundle_dir=$1/bundle" \
        -var "config_file=$1/config.toml" -var "trusted_root_file=$1/root.json" \
        -var "service_file=$1/deltacache.service" -var "provision_script=$1/scripts/provision.sh" \
        -var "monitoring_dir=$1/monitoring" \
        -var "image_version=validate" -var "git_revision=0000000" -var "binary_version=0.0.0" \
        -var "dataset=items" -var "bundle_seq=0" -var "model_fingerprint=00"
}
mapfile -t vars < <(packer_vars "$dummy")
read -r major minor < <(packer version | head -n 1 | sed -E 's/^Packer v?([0-9]+)\.([0-9]+).*/\1 \2/')
if [[ "$major" -gt 1 || ("$major" -eq 1 && "$minor" -ge 7) ]]; then
    # Packer 1.7+ has no built-in amazon-ebs: `packer init` fetches the pinned plugin.
    template="$repo/packer"
    packer init "$template" >/dev/null
else
    template="$repo/packer/deltacache.pkr.hcl"
fi
check "packer validate $(basename "$template") with dummy artefacts" packer validate "${vars[@]}" "$template"
rm "$dummy/root.json"
refuses_missing_artefact() { ! packer validate "${vars[@]}" "$template" >"$tmp/packer-missing.log" 2>&1; }
check "packer validate refuses a missing artefact (root.json)" refuses_missing_artefact

# --- systemd unit ------------------------------------------------------------------------
unit="$repo/packer/deltacache.service"
mkdir -p "$tmp/unit"
# A copy whose ExecStart names a temporary copy of the built binary: systemd-analyze checks
# that the binary exists and is executable, and /usr/local/bin/deltacache is the image's.
sed "s|^ExecStart=/usr/local/bin/deltacache |ExecStart=$tmp/deltacache |" "$unit" >"$tmp/unit/deltacache.service"
unit_verifies() {
    systemd-analyze verify "$tmp/unit/deltacache.service" >"$tmp/systemd-analyze.log" 2>&1 || return 1
    # Unknown keys and bad values are warnings with exit status 0: any output fails.
    if [[ -s "$tmp/systemd-analyze.log" ]]; then
        cat "$tmp/systemd-analyze.log"
        return 1
    fi
}
check "systemd-analyze verify (ExecStart at a temporary copy of $binary; no warnings)" unit_verifies
check "the copy differs from the unit only in ExecStart" \
    test "$(diff "$unit" "$tmp/unit/deltacache.service" | grep -c '^[<>]')" -eq 2

has_line() { grep -qxF -e "$1" "$unit"; }
for line in \
    "Type=notify" \
    "ExecStart=/usr/local/bin/deltacache serve --config /etc/deltacache/config.toml" \
    "ExecReload=/bin/kill -HUP \$MAINPID" \
    "Restart=on-failure" \
    "User=deltacache" \
    "Group=deltacache" \
    "StateDirectory=deltacache" \
    "EnvironmentFile=-/etc/deltacache/env" \
    "ProtectSystem=strict" \
    "ProtectHome=yes" \
    "NoNewPrivileges=yes" \
    "PrivateTmp=yes" \
    "CapabilityBoundingSet=" \
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" \
    "SystemCallFilter=@system-service" \
    "ReadWritePaths=/var/lib/deltacache" \
    "WantedBy=multi-user.target"; do
    check "unit: $line" has_line "$line"
done
key_values() { grep -E "^$1=" "$unit" | sed "s/^$1=//"; }
check "unit: StartLimitIntervalSec and StartLimitBurst set" \
    test -n "$(key_values StartLimitIntervalSec)" -a -n "$(key_values StartLimitBurst)"
check "unit: ReadWritePaths only for the state dir (one line, one path)" \
    test "$(grep -c '^ReadWritePaths=' "$unit")" -eq 1 -a "$(key_values ReadWritePaths)" == /var/lib/deltacache
check "unit: no DynamicUser (the bundle is owned by a fixed system user)" \
    test -z "$(grep -E '^DynamicUser=(yes|true|1)' "$unit")"
check "unit: the bundle is not on a separate read-only mount (ReadOnlyPaths would turn hard links into copies)" \
    test -z "$(grep -E '^ReadOnlyPaths=.*deltacache' "$unit")"

# The unit and the config agree: bundle and state dir inside the writable StateDirectory,
# the start timeout above the boot deadline, the stop timeout above the drain timeout.
config="$repo/packer/config.toml"
config_value() { sed -n -E "s/^$1 = \"?([^\"]*)\"?$/\1/p" "$config"; }
seconds() { # "120s", "5m", "300" -> seconds
    python3 -c '
import re, sys
m = re.fullmatch(r"(\d+)\s*(s|sec|m|min|h)?", sys.argv[1].strip())
print(int(m.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)])' "$1"
}
check "config: bundle and state-dir inside /var/lib/deltacache (the StateDirectory, one mount)" \
    test "$(config_value bundle)" == /var/lib/deltacache/bundle -a "$(config_value state-dir)" == /var/lib/deltacache/state
check "unit TimeoutStartSec ($(key_values TimeoutStartSec)) above the config's boot-deadline ($(config_value boot-deadline))" \
    test "$(seconds "$(key_values TimeoutStartSec)")" -gt "$(seconds "$(config_value boot-deadline)")"
check "unit TimeoutStopSec ($(key_values TimeoutStopSec)) above the config's drain-timeout-secs ($(config_value drain-timeout-secs))" \
    test "$(seconds "$(key_values TimeoutStopSec)")" -gt "$(config_value drain-timeout-secs)"
check "config: trusted-root is the installed path /etc/deltacache/root.json" \
    test "$(config_value trusted-root)" == /etc/deltacache/root.json
check "config: no trusted-keys (the earlier trust file, refused by the daemon)" \
    test -z "$(grep -E '^(# )?trusted-keys' "$config")"

# --- the shipped config loads and serves ----------------------------------------------------
# Its paths moved to a temporary directory, the probe port made free (127.0.0.1:0), every
# commented key uncommented so that every key is read, the trusted root a root.json of one
# key for every role (this checks the config, not a key ceremony: rehearse_boot.sh uses
# separate root, targets and online keys), and the store a file:// TUF repository made from
# that root with no delta yet: the daemon syncs to it and serves the bundle.
cfg="$tmp/config"
mkdir -p "$cfg/store"
python3 "$repo/scripts/gen_corpus.py" --n 50 --out "$cfg/items.jsonl" >/dev/null
"$tmp/deltacache" build-base --input "$cfg/items.jsonl" --out "$cfg/bundle" >/dev/null 2>&1
trust_setup() {
    "$tmp/deltacache" keygen --out "$cfg/publisher.key" &&
        "$tmp/deltacache" root init --out "$cfg/root.json" --root-key "$cfg/publisher.key.pub" \
            --targets-key "$cfg/publisher.key.pub" --sign-with "$cfg/publisher.key" &&
        "$tmp/deltacache" repo init --store "file://$cfg/store" --root "$cfg/root.json" --key "$cfg/publisher.key"
} >"$cfg/trust-setup.log" 2>&1
check "keygen, root init and repo init make a file:// TUF repository for the config test" trust_setup
sed -e "s|^bundle = .*|bundle = \"$cfg/bundle\"|" \
    -e "s|^state-dir = .*|state-dir = \"$cfg/state\"|" \
    -e "s|^trusted-root = .*|trusted-root = \"$cfg/root.json\"|" \
    -e "s|^store = .*|store = \"file://$cfg/store\"|" \
    -e "s|^probe-listen = .*|probe-listen = \"127.0.0.1:0\"|" \
    -e "s|^# \([a-z-]* = \)|\1|" \
    -e "s|^canaries = .*|canaries = \"$cfg/canaries.json\"|" \
    "$config" >"$cfg/config.toml"
printf '[{"query": "database replication", "top_k": 5, "min_results": 1}]\n' >"$cfg/canaries.json"
config_serves() {
    "$tmp/deltacache" serve --config "$cfg/config.toml" --listen 127.0.0.1:0 >"$cfg/serve.stdout" 2>"$cfg/serve.stderr" &
    daemon_pid=$!
    local until=$((SECONDS + 30)) addr="" code=""
    while [[ $SECONDS -lt $until ]] && kill -0 "$daemon_pid" 2>/dev/null; do
        addr="$(sed -n 's|^deltacache: listening on http://||p' "$cfg/serve.stdout")"
        if [[ -n "$addr" ]]; then
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/readyz" || true)"
            [[ "$code" != 200 ]] || break
        fi
        sleep 0.1
    done
    # Ready and in step with the repository: a store whose metadata does not verify from the
    # trusted root (or holds no repository) leaves the daemon ready but stale under
    # on-sync-failure = "serve-stale".
    local stale=unknown
    if [[ "$code" == 200 ]]; then
        stale="$(curl -s --max-time 2 "http://$addr/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sync"]["stale"])' 2>/dev/null || echo unknown)"
    fi
    kill -TERM "$daemon_pid" 2>/dev/null || true
    local rc=0
    wait "$daemon_pid" || rc=$?
    daemon_pid=""
    if [[ "$code" != 200 || "$stale" != False || $rc -ne 0 ]]; then
        echo "validate_image.sh: readyz $code, /status sync.stale $stale, exit $rc; stderr:" >&2
        tail -n 5 "$cfg/serve.stderr" >&2
        return 1
    fi
}
check "deltacache serve --config packer/config.toml (paths moved to a temporary dir, every key set) becomes ready, in step with the TUF repository (not stale), and exits 0" config_serves
check "the config's test copy sets every key the config documents ($(grep -cE '^(# )?[a-z-]+ = ' "$config"))" \
    test "$(grep -cE '^[a-z-]+ = ' "$cfg/config.toml")" -eq "$(grep -cE '^(# )?[a-z-]+ = ' "$config")"

# --- scripts -------------------------------------------------------------------------------
for script in "$repo"/scripts/*.sh; do
    check "shellcheck scripts/$(basename "$script")" shellcheck "$script"
done
script_shape() { # FILE
    [[ "$(head -n 1 "$1")" == "#!/usr/bin/env bash" ]] &&
        grep -qx 'set -euo pipefail' "$1" &&
        [[ -x "$1" ]] &&
        "$1" --help >/dev/null
}
for name in prepare_artifacts.sh provision.sh bake.sh rehearse_boot.sh validate_image.sh; do
    check "scripts/$name: bash shebang, set -euo pipefail, executable, --help" script_shape "$repo/scripts/$name"
done

echo "validate_image.sh: $((SECONDS - started_at))s"
echo "validate_image: $n_passed passed, $n_failed failed"
[[ $n_failed -eq 0 ]]
