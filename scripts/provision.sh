#!/usr/bin/env bash
# Installs prepared deltacache artefacts into a root filesystem: on the Packer builder
# (--root /) or into a temporary directory for a rehearsal. Copies only; builds nothing.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: provision.sh [--root DIR] [--artifacts DIR] [--owner USER]

Installs the artefacts laid out by prepare_artifacts.sh under ROOT:
  bin/deltacache       -> ROOT/usr/local/bin/deltacache                   0755 root
  bundle/              -> ROOT/var/lib/deltacache/bundle/                 files 0444, dirs 0555, OWNER
  config.toml          -> ROOT/etc/deltacache/config.toml                 0644 root
  root.json            -> ROOT/etc/deltacache/root.json                   0644 root
  deltacache.service   -> ROOT/etc/systemd/system/deltacache.service      0644 root
  monitoring/          -> ROOT/usr/share/doc/deltacache/monitoring/       files 0644, dirs 0755, root
                          (Prometheus alerting rules, their tests, the Grafana dashboard)
and makes ROOT/var/lib/deltacache (0750) and ROOT/var/lib/deltacache/state (0750), owned by OWNER.

  --root DIR        root filesystem to install into [default: /]
  --artifacts DIR   the prepared artefacts [default: the directory above this script]
  --owner USER      the service user that owns the bundle and state dir [default: deltacache].
                    With --root / and as root, a missing user is created (useradd --system).
                    Under another root, an existing user is used as is; a missing one is
                    reported and ownership is left alone (what would be done is printed).
  -h, --help        this text

With --root / the unit is enabled (not started) when systemctl is present; under another
root it is enabled offline with `systemctl --root` when systemctl is present. No secret is
installed: run-time credentials go in /etc/deltacache/env, written at boot, never baked. An
artefact holding secret key material (a PKCS#8 private key in DER or PEM, any PEM private
key, an old deltacache-ed25519-secret line) or a root.json that is not TUF root metadata is
refused before anything is installed.
EOF
}

die() {
    echo "provision.sh: $*" >&2
    exit 1
}

root=/
artifacts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
owner=deltacache
while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root="$2"; shift 2 ;;
        --artifacts) [[ $# -ge 2 ]] || die "--artifacts needs a directory"; artifacts="$2"; shift 2 ;;
        --owner) [[ $# -ge 2 ]] || die "--owner needs a user name"; owner="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -d "$root" ]] || die "--root $root is not a directory"
root="$(cd "$root" && pwd)"
[[ -d "$artifacts" ]] || die "--artifacts $artifacts is not a directory (run prepare_artifacts.sh --out DIR first)"
artifacts="$(cd "$artifacts" && pwd)"

missing=()
[[ -f "$artifacts/bin/deltacache" ]] || missing+=("bin/deltacache (the release binary)")
[[ -f "$artifacts/bundle/manifest.json" ]] || missing+=("bundle/manifest.json (the bundle from build-base or compact)")
[[ -f "$artifacts/config.toml" ]] || missing+=("config.toml (the daemon's config)")
if [[ ! -f "$artifacts/root.json" ]]; then
    if [[ -e "$artifacts/trusted-keys.pub" ]]; then
        missing+=("root.json (the TUF root instances trust; trusted-keys.pub is the earlier trust file, which the daemon refuses)")
    else
        missing+=("root.json (the TUF root instances trust)")
    fi
fi
[[ -f "$artifacts/deltacache.service" ]] || missing+=("deltacache.service (the systemd unit)")
[[ -f "$artifacts/monitoring/alerts.yml" && -f "$artifacts/monitoring/dashboard.json" ]] ||
    missing+=("monitoring/alerts.yml and monitoring/dashboard.json (packer/monitoring/: the Prometheus rules and the Grafana dashboard)")
if [[ ${#missing[@]} -gt 0 ]]; then
    for item in "${missing[@]}"; do
        echo "provision.sh: missing in $artifacts: $item" >&2
    done
    die "prepare the artefacts with scripts/prepare_artifacts.sh --out $artifacts"
fi

# Refuse to bake a signing key or a run-time environment file: both are secrets that belong
# on the publisher's machine (root keys offline) or in /etc/deltacache/env at boot, never in
# an image. Keys are PKCS#8 (DER as `deltacache keygen` writes them, or PEM); the earlier
# format was a deltacache-ed25519-secret line.
secret_key_material() { # FILE: succeeds when FILE holds secret key material
    local head
    head="$(od -An -tx1 -N9 "$1" | tr -d ' \n')"
    # PKCS#8 PrivateKeyInfo in DER: SEQUENCE { INTEGER 0 or 1, SEQUENCE AlgorithmIdentifier ...
    [[ "$head" =~ ^30([0-7][0-9a-f]|81[0-9a-f]{2}|82[0-9a-f]{4})0201(00|01)30 ]] && return 0
    grep -qa -e 'PRIVATE KEY-----' -e 'deltacache-ed25519-secret' "$1"
}
for f in config.toml root.json deltacache.service; do
    if secret_key_material "$artifacts/$f"; then
        die "$artifacts/$f holds secret key material (a private key): only public keys belong in an image, and they are in root.json (TUF root metadata)"
    fi
done
# root.json is TUF root metadata: a JSON object whose signed part is of _type root.
if ! grep -q '"_type"[[:space:]]*:[[:space:]]*"root"' "$artifacts/root.json" || ! grep -q '"signatures"' "$artifacts/root.json"; then
    die "$artifacts/root.json is not TUF root metadata (no \"_type\": \"root\" and \"signatures\"): lay the artefacts out with prepare_artifacts.sh --trusted-root root.json"
fi
[[ ! -e "$artifacts/env" ]] || die "$artifacts/env exists: run-time environment files are written at boot, never baked"

if [[ "$root" == / ]]; then prefix=""; else prefix="$root"; fi
bin_path="$prefix/usr/local/bin/deltacache"
lib_dir="$prefix/var/lib/deltacache"
bundle_path="$lib_dir/bundle"
state_path="$lib_dir/state"
etc_dir="$prefix/etc/deltacache"
doc_dir="$prefix/usr/share/doc/deltacache"
unit_path="$prefix/etc/systemd/system/deltacache.service"

is_root=false
[[ $EUID -eq 0 ]] && is_root=true
[[ -n "$prefix" ]] || $is_root || die "installing into / needs root: run it with sudo (or pass --root DIR for a rehearsal)"

# The service user. Created only on a real root: under a temporary root, useradd would
# change the host's /etc/passwd.
if ! getent passwd "$owner" >/dev/null; then
    if [[ -z "$prefix" ]] && $is_root; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "deltacache daemon" "$owner"
        echo "provision.sh: created system user $owner"
    else
        echo "provision.sh: user $owner does not exist here; would run: useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $owner"
    fi
fi
can_chown=false
if getent passwd "$owner" >/dev/null && $is_root; then
    can_chown=true
fi
owner_group="$(id -gn "$owner" 2>/dev/null || echo "$owner")"

# Root-owned files: binary, config, trusted root, unit. `install -o root` only as root.
install_file() { # MODE SRC DST
    if $is_root; then
        install -D -m "$1" -o root -g root "$2" "$3"
    else
        install -D -m "$1" "$2" "$3"
    fi
}
install_file 0755 "$artifacts/bin/deltacache" "$bin_path"
install -d -m 0755 "$etc_dir"
install_file 0644 "$artifacts/config.toml" "$etc_dir/config.toml"
install_file 0644 "$artifacts/root.json" "$etc_dir/root.json"
# The earlier trust file (public keys, refused by the daemon) left by a provisioning of
# before TUF under the same root: removed so that the image holds one trust anchor.
rm -f "$etc_dir/trusted-keys.pub"
install_file 0644 "$artifacts/deltacache.service" "$unit_path"
# The monitoring as code, for operators to copy into their Prometheus and Grafana; replaced
# whole so a file dropped from packer/monitoring/ does not linger.
rm -rf "$doc_dir/monitoring"
install -d -m 0755 "$doc_dir/monitoring"
for f in "$artifacts"/monitoring/*; do
    install_file 0644 "$f" "$doc_dir/monitoring/$(basename "$f")"
done

# The bundle: copied beside its final place, modes set, then swapped in, so a re-run
# replaces a previous bundle whole.
install -d -m 0750 "$lib_dir" "$state_path"
staging="$lib_dir/.bundle.provisioning"
rm -rf "$staging"
cp -R "$artifacts/bundle" "$staging"
find "$staging" -type f -exec chmod 0444 {} +
if $can_chown; then
    chown -R "$owner:$owner_group" "$staging" "$lib_dir" "$state_path"
else
    reason="user $owner does not exist"
    $is_root || reason="not running as root"
    echo "provision.sh: would run: chown -R $owner:$owner_group $lib_dir (bundle and state dir); skipped: $reason"
fi
# Directories last: 0555 forbids adding files, so the owner change above came first.
find "$staging" -type d -exec chmod 0555 {} +
if [[ -e "$bundle_path" ]]; then
    chmod -R u+w "$bundle_path"
    rm -rf "$bundle_path"
fi
mv "$staging" "$bundle_path"

# Enable (never start: the state dir stays empty in the image).
if command -v systemctl >/dev/null; then
    if [[ -z "$prefix" ]]; then
        if [[ -d /run/systemd/system ]]; then
            systemctl daemon-reload
        fi
        systemctl enable deltacache.service
    else
        systemctl --root="$root" enable deltacache.service
    fi
else
    echo "provision.sh: systemctl not found; deltacache.service installed but not enabled"
fi

seq="$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["dataset"], m["seq"], m["n_items"])' "$bundle_path/manifest.json" 2>/dev/null || echo "? ? ?")"
read -r dataset bundle_seq n_items <<<"$seq"
echo "provision.sh: installed deltacache into $root: dataset $dataset, seq $bundle_seq, $n_items items; bundle $bundle_path owned by $(stat -c %U "$bundle_path")"
