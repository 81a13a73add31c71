#!/usr/bin/env bash
# A local rehearsal of an instance's first boot, run by CI: prepares the artefacts exactly as
# a bake does, installs them with provision.sh into a temporary root, starts the installed
# binary with the installed config against a file:// delta store that is a TUF repository
# holding signed deltas, and checks what an instance would serve, how it follows (a root
# rotated in the store included), how it stops, and what the image holds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: rehearse_boot.sh [--skip-build] [--binary PATH] [--run-as USER] [--timeout SECS] [--keep]
                        [--install]

  --skip-build     reuse target/release/deltacache instead of `cargo build --release --locked`
  --binary PATH    rehearse with this binary (implies --skip-build)
  --run-as USER    when run as root: the unprivileged user that owns the installed bundle and
                   runs the daemon, standing in for the image's deltacache user
                   [default: deltacache if it exists, else nobody]
  --timeout SECS   overall limit for the daemon to become ready or to follow [default: 60]
  --keep           keep the temporary directory (it is always kept after a failure)
  --install        install man-db and groff-base with apt-get when missing (to render the
                   installed man pages); also done when the CI environment variable is set
  -h, --help       this text

As root, and where mount namespaces are allowed, the daemon runs under the mounts that the
unit's ProtectSystem=strict and StateDirectory= give it (the root read-only, /var/lib/deltacache
read-write) and the rehearsal checks that the bundle's tables were still hard-linked.
Prints one line per check and ends with `rehearsal: N passed, M failed`; exits non-zero on
any failure.
EOF
}

skip_build=false
binary=""
run_as=""
timeout_secs=60
keep=false
install_tools=false
[[ -z "${CI:-}" ]] || install_tools=true
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-build) skip_build=true; shift ;;
        --binary) [[ $# -ge 2 ]] || { echo "rehearse_boot.sh: --binary needs a path" >&2; exit 2; }; binary="$2"; skip_build=true; shift 2 ;;
        --run-as) [[ $# -ge 2 ]] || { echo "rehearse_boot.sh: --run-as needs a user" >&2; exit 2; }; run_as="$2"; shift 2 ;;
        --timeout) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "rehearse_boot.sh: --timeout needs whole seconds" >&2; exit 2; }; timeout_secs="$2"; shift 2 ;;
        --keep) keep=true; shift ;;
        --install) install_tools=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "rehearse_boot.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

missing=()
for tool in python3 curl sha256sum; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "rehearse_boot.sh: missing tools: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 2
fi
# The installed man pages are rendered with man-db and groff: installed with apt-get when
# missing under CI (the CI environment variable set) or with --install.
install_flag=()
! $install_tools || install_flag=(--install)
"$repo/scripts/apt_tools.sh" --for rehearse_boot.sh "${install_flag[@]}" man=man-db groff=groff-base

n_passed=0
n_failed=0
daemon_pid=""
tmp=""

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
json_file_check() { # FILE PYTHON-EXPRESSION over `d` (the parsed file)
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null
}
summary() {
    echo "rehearsal: $n_passed passed, $n_failed failed"
}
fatal() { # a step the rest depends on failed: count it, report, stop
    fail "$*"
    [[ -z "$tmp" ]] || echo "rehearse_boot.sh: logs and files kept in $tmp"
    summary
    exit 1
}
cleanup() {
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n "$tmp" ]] && ! $keep && [[ $n_failed -eq 0 ]]; then
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

started_at=$SECONDS
deadline() { echo $((SECONDS + timeout_secs)); }

# --- the binary -------------------------------------------------------------------------
if ! $skip_build; then
    echo "rehearse_boot.sh: cargo build --release --locked"
    (cd "$repo" && cargo build --release --locked) || fatal "cargo build --release --locked"
fi
[[ -n "$binary" ]] || binary="$repo/target/release/deltacache"
[[ -x "$binary" ]] || fatal "no deltacache binary at $binary (run without --skip-build)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/deltacache-rehearsal.XXXXXX")"
# The service user must be able to reach the installed root and the store below it.
chmod 0755 "$tmp"
work="$tmp/work"
root="$tmp/root"
store_dir="$tmp/store"
mkdir -p "$work" "$root" "$store_dir"
# A private copy: target/release may be rebuilt while the rehearsal runs.
cp "$binary" "$work/deltacache"
dc="$work/deltacache"
echo "rehearse_boot.sh: $("$dc" --version), working in $tmp"

# Who owns the bundle and runs the daemon. As root: an unprivileged user, so that file modes
# and fs.protected_hardlinks apply as they do to the image's deltacache user.
run_prefix=()
provision_owner=()
if [[ $EUID -eq 0 ]]; then
    if [[ -z "$run_as" ]]; then
        if getent passwd deltacache >/dev/null; then run_as=deltacache; else run_as=nobody; fi
    fi
    getent passwd "$run_as" >/dev/null || fatal "--run-as $run_as: no such user"
    command -v setpriv >/dev/null || fatal "setpriv not found (apt-get install util-linux)"
    run_group="$(id -gn "$run_as")"
    run_prefix=(setpriv "--reuid=$run_as" "--regid=$run_group" --clear-groups --)
    provision_owner=(--owner "$run_as")
else
    run_as="$(id -un)"
fi

# --- a catalogue, the keys, a root, a base bundle, a TUF repository with signed deltas ------
# The roles as a production setup separates them: three offline root keys of which two must
# sign a root (so the rehearsal shows a threshold at work, and that a root signed by two of
# three is baked and trusted), a targets key that signs the deltas, and an online key for
# snapshot and timestamp. Five keygens cost nothing next to a build; one key for every role
# would hide a mixed-up role (a delta signed with the wrong key) that separate keys show.
python3 "$repo/scripts/gen_corpus.py" --n 500 --out "$work/items.jsonl" >/dev/null ||
    fatal "scripts/gen_corpus.py --n 500"
keys="$work/keys"
mkdir -p "$keys"
chmod 0700 "$keys"
for key in root-1 root-2 root-3 targets online targets-2 online-2; do
    "$dc" keygen --out "$keys/$key.key" >>"$work/keygen.log" 2>&1 ||
        fatal "deltacache keygen --out $keys/$key.key (see $work/keygen.log)"
done
pass "deltacache keygen: 3 root keys, a targets key and an online key (and the replacements of the last two)"
check "keygen writes secret keys 0600 and public keys 0644" \
    test "$(stat -c %a "$keys/targets.key")" == 600 -a "$(stat -c %a "$keys/targets.key.pub")" == 644
"$dc" root init --out "$work/root.json" \
    --root-key "$keys/root-1.key.pub" --root-key "$keys/root-2.key.pub" --root-key "$keys/root-3.key.pub" \
    --root-threshold 2 --targets-key "$keys/targets.key.pub" --online-key "$keys/online.key.pub" \
    --sign-with "$keys/root-1.key" --sign-with "$keys/root-2.key" >"$work/root-init.log" 2>&1 ||
    fatal "deltacache root init, signed by 2 of 3 root keys (see $work/root-init.log)"
check "root init: root.json version 1, root threshold 2, signed by 2 root keys" json_file_check "$work/root.json" \
    "d['signed']['_type'] == 'root' and d['signed']['version'] == 1 and d['signed']['roles']['root']['threshold'] == 2 and len(d['signatures']) == 2"
# The publisher's bundle: the same catalogue through build-base, as prepare_artifacts.sh
# will build it again (build-base is deterministic but for created_at).
"$dc" build-base --input "$work/items.jsonl" --out "$work/publisher-bundle" >/dev/null 2>"$work/build-base.log" ||
    fatal "deltacache build-base (see $work/build-base.log)"

# Delta 1: a new item, an updated item, a deleted item. Delta 2: another new item. Their
# texts are made of words from the catalogue, so that they are in the model's vocabulary.
python3 - "$work/items.jsonl" "$work" <<'PY' || fatal "write the changes files"
import json, sys
items = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
work = sys.argv[2]
def mix(*idx):
    return " ".join(items[i]["text"] for i in idx)
new1 = {"id": "rehearsal-new-1", "title": "Rehearsal item one", "category": "rehearsal", "text": mix(10, 20, 30)}
upd = dict(items[5]); upd["title"] = "Rehearsal updated title"; upd["text"] = mix(40, 50)
gone = items[7]["id"]
new2 = {"id": "rehearsal-new-2", "title": "Rehearsal item two", "category": "rehearsal", "text": mix(60, 70)}
new3 = {"id": "rehearsal-new-3", "title": "Rehearsal item three", "category": "rehearsal", "text": mix(80, 90)}
with open(f"{work}/changes-1.jsonl", "w") as f:
    for op in ({"op": "put", "item": new1}, {"op": "put", "item": upd}, {"op": "delete", "id": gone}):
        f.write(json.dumps(op) + "\n")
with open(f"{work}/changes-2.jsonl", "w") as f:
    f.write(json.dumps({"op": "put", "item": new2}) + "\n")
with open(f"{work}/changes-3.jsonl", "w") as f:
    f.write(json.dumps({"op": "put", "item": new3}) + "\n")
with open(f"{work}/expect.json", "w") as f:
    json.dump({"new1": new1, "upd": upd, "gone": gone, "new2": new2, "new3": new3}, f)
PY

store_url="file://$store_dir"
# A second store, empty: prepare_artifacts.sh must refuse to bake against it (below).
empty_store_url="file://$tmp/empty-store"
mkdir -p "$tmp/empty-store"
"$dc" repo init --store "$store_url" --root "$work/root.json" --key "$keys/targets.key" --key "$keys/online.key" \
    >"$work/repo-init.log" 2>&1 || fatal "deltacache repo init --store $store_url (see $work/repo-init.log)"
pass "deltacache repo init: the file:// store is a TUF repository of root version 1"
publish() { # N TARGETS-KEY ONLINE-KEY
    "$dc" publish-delta --store "$store_url" --key "$keys/$2.key" --key "$keys/$3.key" \
        --trusted-root "$work/root.json" \
        --bundle "$work/publisher-bundle" --changes "$work/changes-$1.jsonl" --expires-in 1h \
        >>"$work/publish.log" 2>&1 || fatal "deltacache publish-delta changes-$1.jsonl (see $work/publish.log)"
}
publish 1 targets online
publish 2 targets online
published_seq=2
# The service user reads the file:// store as the image's deltacache user reads S3: the
# store's objects must be readable by others without any chmod (file store objects are
# created 0644).
store_unreadable() { find "$store_dir" \( -type f ! -perm -0444 \) -o \( -type d ! -perm -0555 \) | head -n 5; }
check "every object of the file:// store is readable by other users (no chmod needed)" \
    test -z "$(store_unreadable)"
check "the store has metadata/ and targets/ (a TUF repository with consistent snapshots)" \
    test -f "$store_dir/metadata/1.root.json" -a -f "$store_dir/metadata/timestamp.json" -a -d "$store_dir/targets"

# --- prepare and provision, as a bake does ------------------------------------------------
# Canaries: run-time secrets present in the environment of whoever bakes must not reach the
# image.
pinecone_canary="pcsk_rehearsal_canary_$RANDOM$RANDOM"
aws_canary="awsSecretRehearsalCanary$RANDOM$RANDOM"
PINECONE_API_KEY="$pinecone_canary" AWS_SECRET_ACCESS_KEY="$aws_canary" \
    "$repo/scripts/prepare_artifacts.sh" --skip-build --binary "$dc" \
    --catalogue "$work/items.jsonl" --store "$store_url" \
    --trusted-root "$work/root.json" --out "$tmp/artifacts" >"$work/prepare.log" 2>&1 ||
    fatal "prepare_artifacts.sh (see $work/prepare.log)"
pass "prepare_artifacts.sh laid out the artefacts and verified the bundle against the store's TUF repository"
check "prepare_artifacts.sh verified the chain up to seq $published_seq from root version 1" \
    grep -qE "^ok $store_url: root version 1, .*; $published_seq deltas verified back to seq 0 " "$work/prepare.log"
check "prepare_artifacts.sh laid out root.json byte-identical to the root made by root init" \
    cmp -s "$work/root.json" "$tmp/artifacts/root.json"

# What prepare_artifacts.sh refuses, each before anything is laid out or baked.
refused() { # DESCRIPTION EXPECTED-MESSAGE-REGEX PREPARE-ARGS...: prepare fails with that message
    local description="$1" pattern="$2" log="$work/refused.$((n_passed + n_failed)).log"
    shift 2
    if "$repo/scripts/prepare_artifacts.sh" --skip-build --binary "$dc" "$@" >"$log" 2>&1; then
        fail "$description (it succeeded; see $log)"
    elif ! grep -qE -e "$pattern" "$log"; then
        fail "$description (no message matching /$pattern/; see $log)"
    else
        pass "$description"
    fi
}
refused "prepare_artifacts.sh refuses --trusted-keys, naming --trusted-root" "--trusted-keys is gone.*--trusted-root" \
    --bundle "$work/publisher-bundle" --store "$store_url" --trusted-keys "$keys/targets.key.pub" --out "$tmp/refused-1"
refused "prepare_artifacts.sh refuses a secret key (PKCS#8 DER from keygen) as --trusted-root" "secret key material" \
    --bundle "$work/publisher-bundle" --store "$store_url" --trusted-root "$keys/root-1.key" --out "$tmp/refused-2"
printf -- '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n' >"$work/pem.key"
refused "prepare_artifacts.sh refuses a PEM private key as --trusted-root" "secret key material" \
    --bundle "$work/publisher-bundle" --store "$store_url" --trusted-root "$work/pem.key" --out "$tmp/refused-3"
refused "prepare_artifacts.sh refuses a public key that is not TUF root metadata as --trusted-root" "not TUF root metadata" \
    --bundle "$work/publisher-bundle" --store "$store_url" --trusted-root "$keys/targets.key.pub" --out "$tmp/refused-4"
refused "prepare_artifacts.sh refuses a store holding no TUF repository, naming repo init" "holds no TUF repository yet.*repo init" \
    --bundle "$work/publisher-bundle" --store "$empty_store_url" --trusted-root "$work/root.json" --out "$tmp/refused-5"

bundle_digests() { # DIR: sha256 and relative path of every file, sorted
    (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
}
bundle_digests "$tmp/artifacts/bundle" >"$work/bundle.before.sha256"

# What provision.sh refuses before installing anything: artefacts whose root.json is a secret
# key (the DER keygen writes), or whose config carries a PEM private key.
provision_refuses() { # ARTEFACT-FILE CONTENT-FILE: provision.sh fails on artefacts with it, installing nothing
    local fake="$tmp/fake-artifacts" fake_root="$tmp/fake-root" rc=0
    rm -rf "$fake" "$fake_root"
    mkdir -p "$fake/bin" "$fake/bundle" "$fake_root"
    cp "$tmp/artifacts/bundle/manifest.json" "$fake/bundle/manifest.json"
    for f in bin/deltacache config.toml root.json deltacache.service; do cp "$tmp/artifacts/$f" "$fake/$f"; done
    cp -R "$tmp/artifacts/monitoring" "$fake/monitoring"
    cp "$2" "$fake/$1"
    "$repo/scripts/provision.sh" --root "$fake_root" --artifacts "$fake" "${provision_owner[@]}" \
        >"$work/provision-refused.log" 2>&1 || rc=$?
    [[ $rc -ne 0 ]] && grep -q "secret key material" "$work/provision-refused.log" && [[ -z "$(ls -A "$fake_root")" ]]
}
check "provision.sh refuses artefacts whose root.json is a secret key (PKCS#8 DER), installing nothing" \
    provision_refuses root.json "$keys/online.key"
check "provision.sh refuses artefacts whose config holds a PEM private key, installing nothing" \
    provision_refuses config.toml "$work/pem.key"

"$repo/scripts/provision.sh" --root "$root" --artifacts "$tmp/artifacts" "${provision_owner[@]}" \
    >"$work/provision.log" 2>&1 || fatal "provision.sh --root $root (see $work/provision.log)"
pass "provision.sh --root $root"

bin_path="$root/usr/local/bin/deltacache"
bundle_path="$root/var/lib/deltacache/bundle"
state_path="$root/var/lib/deltacache/state"
config_path="$root/etc/deltacache/config.toml"
installed_root="$root/etc/deltacache/root.json"
unit_path="$root/etc/systemd/system/deltacache.service"

mode_is() { # MODE FILE
    [[ "$(stat -c %a "$2")" == "$1" ]]
}
all_modes_are() { # MODE TYPE DIR: every entry of TYPE under DIR has MODE
    [[ -z "$(find "$3" -type "$2" ! -perm "$1" -print -quit)" ]]
}
check "binary installed 0755 at /usr/local/bin/deltacache" mode_is 755 "$bin_path"
check "bundle files installed 0444" all_modes_are 0444 f "$bundle_path"
check "bundle directories installed 0555" all_modes_are 0555 d "$bundle_path"
check "config installed 0644" mode_is 644 "$config_path"
check "trusted root installed 0644 at /etc/deltacache/root.json" mode_is 644 "$installed_root"
check "the installed root is the root made by root init (byte-identical)" cmp -s "$work/root.json" "$installed_root"
check "no earlier trust file installed (/etc/deltacache/trusted-keys.pub)" test ! -e "$root/etc/deltacache/trusted-keys.pub"
check "unit installed 0644" mode_is 644 "$unit_path"
monitoring_installed() { # every file of packer/monitoring/, byte-identical and 0644, and nothing else
    local dir="$root/usr/share/doc/deltacache/monitoring" f
    [[ "$(find "$dir" -type f | wc -l)" -eq "$(find "$repo/packer/monitoring" -type f | wc -l)" ]] || return 1
    for f in "$repo"/packer/monitoring/*; do
        cmp -s "$f" "$dir/$(basename "$f")" && mode_is 644 "$dir/$(basename "$f")" || return 1
    done
}
check "every file of packer/monitoring/ installed byte-identical, 0644, under /usr/share/doc/deltacache/monitoring/" \
    monitoring_installed

# Man pages and completions: one page per subcommand, each rendered by man without a
# warning; the bash completion loads and completes a subcommand and a flag's values.
man_dir="$root/usr/share/man/man1"
"$dc" generate man --out "$work/man-expected" >/dev/null
n_expected_pages="$(find "$work/man-expected" -name '*.1' | wc -l)"
n_installed_pages="$(find "$man_dir" -name 'deltacache*.1.gz' -perm 0644 | wc -l)"
check "man pages installed 0644 under /usr/share/man/man1: $n_installed_pages of $n_expected_pages (deltacache.1.gz, deltacache-serve.1.gz, ...)" \
    test "$n_installed_pages" -eq "$n_expected_pages" -a -f "$man_dir/deltacache.1.gz" -a -f "$man_dir/deltacache-serve.1.gz"
man_renders() { # prints the pages that do not render, or render with a warning
    local page
    for page in "$man_dir"/deltacache*.1.gz; do
        if ! LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" >"$work/man.out" 2>"$work/man.err" ||
            [[ -s "$work/man.err" ]] || ! grep -q "deltacache" "$work/man.out"; then
            echo "$page: $(head -n 3 "$work/man.err")"
        fi
    done
}
man_problems="$(man_renders)"
check "man -l renders every installed page without a warning" test -z "$man_problems"
[[ -z "$man_problems" ]] || echo "$man_problems"
serve_page_documents() { # FLAG...: the rendered deltacache-serve page names every FLAG
    LC_ALL=C.UTF-8 man -l "$man_dir/deltacache-serve.1.gz" >"$work/serve.man" 2>/dev/null || return 1
    local flag
    for flag in "$@"; do grep -qe "$flag" "$work/serve.man" || return 1; done
}
check "man -l deltacache-serve.1.gz documents --log-format and --config" serve_page_documents --log-format --config
bash_completion="$root/usr/share/bash-completion/completions/deltacache"
check "bash completion installed 0644 at /usr/share/bash-completion/completions/deltacache" mode_is 644 "$bash_completion"
bash_completes() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    bash -c 'source "$1"
complete -p deltacache >/dev/null || exit 1
COMP_WORDS=(deltacache se); COMP_CWORD=1; _deltacache deltacache se deltacache
[[ " ${COMPREPLY[*]} " == *" serve "* ]] || exit 1
COMP_WORDS=(deltacache serve --log-format ""); COMP_CWORD=3; _deltacache deltacache "" --log-format
[[ "${COMPREPLY[*]}" == "text json" ]]' bash "$bash_completion"
}
check "bash completion loads (complete -p deltacache) and completes \"deltacache se\" to serve and --log-format to text json" bash_completes
check "zsh and fish completions installed 0644 (/usr/share/zsh/vendor-completions/_deltacache, /usr/share/fish/vendor_completions.d/deltacache.fish)" \
    test "$(stat -c %a "$root/usr/share/zsh/vendor-completions/_deltacache")" == 644 -a \
    "$(stat -c %a "$root/usr/share/fish/vendor_completions.d/deltacache.fish")" == 644
check "bundle owned by the service user ($run_as)" \
    test -z "$(find "$bundle_path" "$state_path" ! -user "$run_as" -print -quit)"
check "no run-time environment file baked (/etc/deltacache/env)" test ! -e "$root/etc/deltacache/env"
if command -v systemctl >/dev/null; then
    check "unit enabled for multi-user.target" \
        test -L "$root/etc/systemd/system/multi-user.target.wants/deltacache.service"
fi
check "installed config points at the store" \
    grep -qx "store = \"$store_url\"" "$config_path"
check "installed config points at the installed trusted root" \
    grep -qx 'trusted-root = "/etc/deltacache/root.json"' "$config_path"

# --- first boot ---------------------------------------------------------------------------
# The installed config with its paths moved under the temporary root. Everything else,
# including the store and the policies, is what the image ships; the commented keys
# (out of the image's way) are set too, so that every key of the file is exercised.
sed -e "s|^bundle = \"/|bundle = \"$root/|" \
    -e "s|^state-dir = \"/|state-dir = \"$root/|" \
    -e "s|^trusted-root = \"/|trusted-root = \"$root/|" \
    -e "s|^probe-listen = .*|probe-listen = \"127.0.0.1:0\"|" \
    -e "s|^# \([a-z-]* = \)|\1|" \
    -e "s|^canaries = \"/|canaries = \"$root/|" \
    "$config_path" >"$work/config.toml"
chmod 0644 "$work/config.toml"
# The canary the health gate runs on every version the rehearsal makes.
printf '[{"query": "database replication", "top_k": 5, "min_results": 1}]\n' >"$root/etc/deltacache/canaries.json"
check "every config key the image documents is set in the rehearsal's config" \
    test "$(grep -cE '^[a-z-]+ = ' "$work/config.toml")" -eq "$(grep -cE '^(# )?[a-z-]+ = ' "$config_path")"

# As root where mount namespaces are allowed: the unit's view of the filesystem. The root is
# read-only (ProtectSystem=strict) and /var/lib/deltacache a read-write bind mount on top
# (StateDirectory=, ReadWritePaths=); link(2) fails across mounts, so this shows whether the
# layout still lets the first version hard-link the bundle's tables.
sandbox=false
if [[ $EUID -eq 0 ]] && unshare --mount --propagation private true 2>/dev/null; then
    sandbox=true
fi
start_daemon() { # LOGNAME
    local out="$work/$1.stdout" err="$work/$1.stderr"
    local cmd=("${run_prefix[@]}" "$bin_path" serve --config "$work/config.toml" --listen 127.0.0.1:0)
    if $sandbox; then
        # shellcheck disable=SC2016 # expanded by the inner shell
        RUST_LOG="info,deltacache::sync::follow=debug" unshare --mount --propagation private bash -c '
            set -e
            root="$1"; shift
            mount --bind "$root" "$root"
            mount -o remount,bind,ro "$root"
            mount --bind "$root/var/lib/deltacache" "$root/var/lib/deltacache"
            mount -o remount,bind,rw "$root/var/lib/deltacache"
            exec "$@"' sandbox "$root" "${cmd[@]}" >"$out" 2>"$err" &
    else
        RUST_LOG="info,deltacache::sync::follow=debug" "${cmd[@]}" >"$out" 2>"$err" &
    fi
    daemon_pid=$!
}
wait_for() { # DESCRIPTION COMMAND...: polls every 0.1 s until the command succeeds or time runs out
    local description="$1" until
    shift
    until=$(deadline)
    while ! "$@"; do
        if [[ -n "$daemon_pid" ]] && ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "rehearse_boot.sh: the daemon exited while waiting for: $description" >&2
            return 1
        fi
        if [[ $SECONDS -ge $until ]]; then
            echo "rehearse_boot.sh: timed out after ${timeout_secs}s waiting for: $description" >&2
            return 1
        fi
        sleep 0.1
    done
}

start_daemon boot
boot_started=$SECONDS
wait_for "the listening line" grep -q '^deltacache: listening on http://' "$work/boot.stdout" ||
    fatal "the installed binary started with the installed config (see $work/boot.stderr)"
addr="$(sed -n 's|^deltacache: listening on http://||p' "$work/boot.stdout" | head -n 1)"
base="http://$addr"
pass "the installed binary started with the installed config, listening on $addr"

http_code() { # PATH
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base$1" || true
}
readyz_ok() { [[ "$(http_code /readyz)" == 200 ]]; }
wait_for "/readyz 200" readyz_ok || fatal "/readyz answered 200 (see $work/boot.stderr)"
pass "/readyz answered 200 after $((SECONDS - boot_started))s"

curl -s --max-time 5 "$base/status" >"$work/status.json" || true
json_check() { # FILE PYTHON-EXPRESSION over `d` (the parsed file) and `e` (the expectations)
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
e = json.load(open(sys.argv[2]))
sys.exit(0 if eval(sys.argv[3]) else 1)' "$1" "$work/expect.json" "$2" 2>/dev/null
}
check "/status: seq $published_seq, the published head" json_check "$work/status.json" "d['seq'] == $published_seq"
check "/status: ready, not stale, dataset items, bundle seq 0" json_check "$work/status.json" \
    "d['ready'] and d['sync']['stale'] is False and d['dataset'] == 'items' and d['sync']['bundle_seq'] == 0"
check "/status: short form, no file path (status-detail is off in the shipped config)" json_check "$work/status.json" "'bundle' not in d and 'store' not in d['sync']"
"${run_prefix[@]}" "$bin_path" status --state-dir "$state_path" --json >"$work/cli-status.json" 2>"$work/cli-status.stderr" || true
check "deltacache status (control socket): the daemon serves the installed bundle at seq $published_seq" json_check "$work/cli-status.json" \
    "d['daemon']['bundle'] == '$bundle_path' and d['daemon']['seq'] == $published_seq"

curl -s -D "$work/item1.headers" --max-time 5 "$base/items/rehearsal-new-1" >"$work/item1.json" || true
check "/items: the put from delta 1 is served" json_check "$work/item1.json" "d == e['new1']"
check "/items: the answer names data version $published_seq" \
    grep -qi "^x-data-version: $published_seq" "$work/item1.headers"
curl -s --max-time 5 "$base/items/rehearsal-new-2" >"$work/item2.json" || true
check "/items: the put from delta 2 is served" json_check "$work/item2.json" "d == e['new2']"
upd_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upd"]["id"])' "$work/expect.json")"
gone_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gone"])' "$work/expect.json")"
curl -s --max-time 5 "$base/items/$upd_id" >"$work/upd.json" || true
check "/items: the update from delta 1 is served" json_check "$work/upd.json" "d == e['upd']"
check "/items: the delete from delta 1 answers 404" test "$(http_code "/items/$gone_id")" == 404

search() { # ID-KEY OUTFILE: searches for the text of expectation ID-KEY
    python3 -c '
import json, sys
print(json.dumps({"query_text": json.load(open(sys.argv[1]))[sys.argv[2]]["text"], "top_k": 3}))' \
        "$work/expect.json" "$1" >"$work/query.json"
    curl -s --max-time 5 -X POST -H 'content-type: application/json' \
        --data-binary "@$work/query.json" "$base/search" >"$2" || true
}
search new1 "$work/search1.json"
check "/search: the item put by delta 1 ranks first for its own text" json_check "$work/search1.json" \
    "d['results'][0]['id'] == 'rehearsal-new-1' and d['results'][0]['metadata'] == e['new1'] and d['data_version'] == $published_seq"

if $sandbox; then
    check "under the unit's mounts, the first version hard-linked the bundle's tables" \
        grep -qE 'cloned .*db=hard link' "$work/boot.stderr"
else
    echo "skip under the unit's mounts: needs root and mount namespaces; hard links checked without them"
    check "the first version hard-linked the bundle's tables" \
        grep -qE 'cloned .*db=hard link' "$work/boot.stderr"
fi

# The TUF metadata the daemon verified from the baked root, kept in the state dir so that
# later syncs (and a restart) start from it, not from the baked root again.
trusted_metadata() { # the timestamp.json files under state/trust/ (one directory per store and dataset)
    find "$state_path/trust" -mindepth 2 -maxdepth 2 -name timestamp.json -user "$run_as" 2>/dev/null
}
check "the state dir holds the trusted TUF metadata after boot (state/trust/*/timestamp.json, owned by $run_as)" \
    test -n "$(trusted_metadata)"

# --- following: systemctl reload (SIGHUP) syncs now -----------------------------------------
sighup_synced() { grep -q 'trigger="\?SIGHUP' "$work/boot.stderr"; }
kill -HUP "$daemon_pid"
check "SIGHUP (ExecReload) makes the daemon sync" wait_for "a sync triggered by SIGHUP" sighup_synced
# Key rotation without a new image: root version 2 replaces the targets and online keys and
# drops root key 3, signed by 2 of root 1's root keys (and so by 2 of its own). It goes into
# the store; delta 3 is signed only with the new keys. The daemon, which baked root 1, must
# verify root 2 from it, take it over and apply delta 3.
"$dc" root rotate --previous "$work/root.json" --out "$work/root-2.json" \
    --remove-key "targets=$keys/targets.key.pub" --add-key "targets=$keys/targets-2.key.pub" \
    --remove-key "online=$keys/online.key.pub" --add-key "online=$keys/online-2.key.pub" \
    --remove-key "root=$keys/root-3.key.pub" \
    --sign-with "$keys/root-1.key" --sign-with "$keys/root-2.key" >"$work/root-rotate.log" 2>&1 ||
    fatal "deltacache root rotate (see $work/root-rotate.log)"
"$dc" root publish --store "$store_url" --root "$work/root-2.json" --trusted-root "$work/root.json" \
    >>"$work/root-rotate.log" 2>&1 || fatal "deltacache root publish root-2.json (see $work/root-rotate.log)"
pass "root version 2 (new targets and online keys, root key 3 dropped) signed by 2 root keys and published to the store"
publish 3 targets-2 online-2
kill -HUP "$daemon_pid"
seq3() {
    curl -s --max-time 5 "$base/status" >"$work/status3.json" 2>/dev/null &&
        json_check "$work/status3.json" "d['seq'] == 3"
}
check "a delta published while serving, signed with keys only root version 2 names, is applied (seq 3)" \
    wait_for "/status seq 3" seq3
curl -s --max-time 5 "$base/items/rehearsal-new-3" >"$work/item3.json" || true
check "/items: the put from delta 3 is served without a restart" json_check "$work/item3.json" "d == e['new3']"

# Once in step, a following daemon must be idle until the next poll, signal or store change.
cpu_ticks() { # utime + stime of the daemon, in clock ticks
    awk '{print $14 + $15}' "/proc/$daemon_pid/stat"
}
idle_daemon() { # the daemon used under 20% of a core over one second
    local before after hz _
    hz=$(getconf CLK_TCK)
    before=$(cpu_ticks) || return 1
    for _ in 1 2 3 4 5 6 7 8 9 10; do sleep 0.1; done
    after=$(cpu_ticks) || return 1
    echo "rehearse_boot.sh: daemon CPU over 1 s after the last sync: $(( (after - before) * 100 / hz ))% of a core (sync triggers logged so far: $(grep -c 'syncing trigger' "$work/boot.stderr"))"
    [[ $(( (after - before) * 100 )) -lt $(( 20 * hz )) ]]
}
check "the daemon is idle once in step (no sync loop)" idle_daemon

# --- shutdown -------------------------------------------------------------------------------
kill -TERM "$daemon_pid"
pid="$daemon_pid"
daemon_pid=""
until_stop=$((SECONDS + 30))
while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $until_stop ]]; do sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    fail "SIGTERM stopped the daemon within 30 s"
fi
exit_code=0
wait "$pid" || exit_code=$?
check "SIGTERM: clean exit 0 (got $exit_code)" test "$exit_code" -eq 0

# --- what the image holds, after a boot ---------------------------------------------------
bundle_digests "$bundle_path" >"$work/bundle.after.sha256"
check "bundle byte-identical after boot, sync and shutdown (sha256 of every file)" \
    cmp -s "$work/bundle.before.sha256" "$work/bundle.after.sha256"
check "bundle files still 0444 after boot" all_modes_are 0444 f "$bundle_path"
check "a committed version in the installed state dir, owned by $run_as" \
    test -n "$(find "$state_path/versions" -mindepth 1 -maxdepth 1 -user "$run_as" -print -quit)"
trusted_root_version() { # the version of the root kept in state/trust/*/root.json
    local file
    file="$(find "$state_path/trust" -mindepth 2 -maxdepth 2 -name root.json -print -quit 2>/dev/null)"
    [[ -n "$file" ]] && json_file_check "$file" "d['signed']['version'] == $1"
}
rotated_without_new_image() { trusted_root_version 2 && cmp -s "$work/root.json" "$installed_root"; }
check "the state dir trusts root version 2 after the rotation; /etc/deltacache/root.json is still version 1, byte-identical" \
    rotated_without_new_image

no_fixed_string() { # STRING: absent from every installed file (binary, bundle, config, root, unit, state dir)
    ! grep -rqF -e "$1" "$root/usr" "$root/etc" "$root/var"
}
# Every secret key of the rehearsal (root, targets, online, their replacements): neither its
# PKCS#8 bytes nor its 32-byte Ed25519 seed, raw, hex or base64, is in any installed file.
secret_key_leaks() { # prints each key found, with where
    python3 - "$keys" "$root/usr" "$root/etc" "$root/var" <<'PY'
import base64, os, sys
keys_dir, *trees = sys.argv[1:]
needles = {}
for name in sorted(os.listdir(keys_dir)):
    if not name.endswith(".key"):
        continue
    der = open(os.path.join(keys_dir, name), "rb").read()
    at = der.find(b"\x04\x22\x04\x20")  # OCTET STRING { OCTET STRING (32) seed }
    secrets = [der] + ([der[at + 4:at + 36]] if at >= 0 else [])
    for secret in secrets:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            needles[form] = name
    if at < 0:
        print(f"{name}: no Ed25519 seed found in its PKCS#8 bytes")
for tree in trees:
    for top, _, files in os.walk(tree):
        for f in files:
            path = os.path.join(top, f)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            data = open(path, "rb").read()
            for needle, name in needles.items():
                if needle in data:
                    print(f"{name} in {path}")
PY
}
check "no secret key of the rehearsal (3 root, 2 targets, 2 online) is in any installed file, raw, hex or base64" \
    test -z "$(secret_key_leaks)"
secret_key_files() { # installed files that start with a PKCS#8 private key or hold a PEM private key or an old key line
    find "$root/usr" "$root/etc" "$root/var" -type f -print0 | while IFS= read -r -d '' f; do
        if [[ "$(od -An -tx1 -N9 "$f" | tr -d ' \n')" =~ ^30([0-7][0-9a-f]|81[0-9a-f]{2}|82[0-9a-f]{4})0201(00|01)30 ]] ||
            grep -qa -e 'PRIVATE KEY-----' -e 'deltacache-ed25519-secret' "$f"; then
            echo "$f"
        fi
    done
}
check "no secret key file is installed (PKCS#8 DER or PEM private key, deltacache-ed25519-secret)" \
    test -z "$(secret_key_files)"
check "the PINECONE_API_KEY value from the bake's environment is in no installed file" no_fixed_string "$pinecone_canary"
check "the AWS_SECRET_ACCESS_KEY value from the bake's environment is in no installed file" no_fixed_string "$aws_canary"
secret_assignments() {
    grep -HinE '^[[:space:]]*[A-Za-z0-9_.-]*(secret|api[_-]?key|password|token)[A-Za-z0-9_.-]*[[:space:]]*=|PINECONE_API_KEY=[^[:space:]]' \
        "$config_path" "$installed_root" "$unit_path"
}
check "no secret, API key, password or token is set in the config, root or unit" \
    test -z "$(secret_assignments)"
check "the installed root lists public keys only (no private key value)" json_file_check "$installed_root" \
    "all('private' not in k.get('keyval', {}) for k in d['signed']['keys'].values())"

echo "rehearse_boot.sh: $((SECONDS - started_at))s; files in $tmp$( [[ $n_failed -eq 0 ]] && ! $keep && echo " (removed)")"
summary
[[ $n_failed -eq 0 ]]
