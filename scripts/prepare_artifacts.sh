#!/usr/bin/env bash
# Lays out everything an image bake copies: the release binary, a bundle checked against the
# delta store's TUF repository, the config with the store filled in, the trusted TUF root
# (root.json, public keys only), the systemd unit, the provisioning script and the monitoring
# (Prometheus rules, Grafana dashboard). Packer then only copies these files.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: prepare_artifacts.sh (--catalogue items.jsonl | --bundle DIR) --store URL
                            --trusted-root root.json --out DIR
                            [--bundle-seq N] [--dataset NAME] [--skip-build] [--binary PATH]

  --catalogue FILE    JSONL items: `deltacache build-base` makes OUT/bundle from them
  --bundle DIR        an existing bundle instead (for example the output of
                      `deltacache compact`): copied to OUT/bundle as is
  --store URL         the delta store instances sync from: s3://bucket/prefix or file:///dir
  --trusted-root FILE the TUF root instances trust (root.json from `deltacache root init`,
                      or a later root of the same store): public keys and thresholds only
  --out DIR           where to lay out the artefacts (must not exist, or be empty)
  --bundle-seq N      with --catalogue: the delta seq the catalogue already includes
                      (build-base --seq) [default: 0]
  --dataset NAME      with --catalogue: the dataset name (build-base --dataset)
                      [default: the catalogue file's stem]
  --skip-build        use the existing target/release/deltacache instead of
                      `cargo build --release --locked`
  --binary PATH       use this deltacache binary (implies --skip-build)
  -h, --help          this text

Output:
  OUT/bin/deltacache  OUT/bundle/  OUT/config.toml  OUT/root.json
  OUT/deltacache.service  OUT/scripts/provision.sh  OUT/monitoring/ (packer/monitoring/)

The bundle is checked with `deltacache verify --trusted-root FILE --bundle`: the store's TUF
metadata must verify from the root (a newer root in the store, signed by enough of the
baked root's keys, takes over), and a bundle whose dataset, model or seq does not continue
the chain of deltas the metadata names is refused before anything is baked. A store that
holds no TUF repository yet is refused: create it first with
`deltacache repo init --store URL --root root.json --key TARGETS.key --key ONLINE.key`
(an image pointed at a store without a repository would never update).
A root file that is not TUF root metadata, or any file holding secret key material (PKCS#8
DER or PEM, or an old deltacache-ed25519-secret line), is refused; --trusted-keys (the
earlier .pub-lines trust file) is refused with what to pass instead.
EOF
}

die() {
    echo "prepare_artifacts.sh: $*" >&2
    exit 1
}

catalogue=""
bundle_in=""
store=""
trusted_root=""
out=""
bundle_seq=""
dataset=""
skip_build=false
binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --trusted-keys | --trusted-keys=*)
            die "--trusted-keys is gone: instances now trust a TUF root. Pass --trusted-root root.json (made by \`deltacache root init --root-key ... --targets-key ... --sign-with ...\` and given to \`deltacache repo init\` when the store's repository was created, or a later root of that repository)"
            ;;
        --catalogue | --bundle | --store | --trusted-root | --out | --bundle-seq | --dataset | --binary)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            case "$1" in
                --catalogue) catalogue="$2" ;;
                --bundle) bundle_in="$2" ;;
                --store) store="$2" ;;
                --trusted-root) trusted_root="$2" ;;
                --out) out="$2" ;;
                --bundle-seq) bundle_seq="$2" ;;
                --dataset) dataset="$2" ;;
                --binary) binary="$2"; skip_build=true ;;
            esac
            shift 2
            ;;
        --skip-build) skip_build=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

missing=()
[[ -n "$catalogue" || -n "$bundle_in" ]] || missing+=("--catalogue items.jsonl (the items to bake) or --bundle DIR (an existing bundle)")
[[ -n "$store" ]] || missing+=("--store URL (the delta store instances sync from: s3://bucket/prefix or file:///dir)")
[[ -n "$trusted_root" ]] || missing+=("--trusted-root FILE (the TUF root instances trust, from deltacache root init)")
[[ -n "$out" ]] || missing+=("--out DIR (where to lay out the artefacts)")
if [[ ${#missing[@]} -gt 0 ]]; then
    for item in "${missing[@]}"; do echo "prepare_artifacts.sh: missing $item" >&2; done
    die "see --help"
fi

[[ -z "$catalogue" || -z "$bundle_in" ]] || die "give --catalogue or --bundle, not both"
if [[ -n "$bundle_in" && ( -n "$bundle_seq" || -n "$dataset" ) ]]; then
    die "--bundle-seq and --dataset only apply to --catalogue (an existing bundle carries its own)"
fi
[[ -z "$catalogue" || -f "$catalogue" ]] || die "--catalogue $catalogue: no such file"
[[ -z "$bundle_in" || -f "$bundle_in/manifest.json" ]] || die "--bundle $bundle_in: no manifest.json inside (not a bundle)"
[[ -f "$trusted_root" ]] || die "--trusted-root $trusted_root: no such file"
# Secret key material never goes into an image: a PKCS#8 private key (DER as `deltacache
# keygen` writes it, or PEM), any PEM private key, or a key file of the earlier format.
secret_key_material() { # FILE: succeeds when FILE holds secret key material
    local head
    head="$(od -An -tx1 -N9 "$1" | tr -d ' \n')"
    # PKCS#8 PrivateKeyInfo in DER: SEQUENCE { INTEGER 0 or 1, SEQUENCE AlgorithmIdentifier ...
    [[ "$head" =~ ^30([0-7][0-9a-f]|81[0-9a-f]{2}|82[0-9a-f]{4})0201(00|01)30 ]] && return 0
    grep -qa -e 'PRIVATE KEY-----' -e 'deltacache-ed25519-secret' "$1"
}
if secret_key_material "$trusted_root"; then
    die "--trusted-root $trusted_root holds secret key material (a private key): pass the root metadata (root.json from \`deltacache root init\`); secret keys never go into an image"
fi
if ! root_check="$(python3 - "$trusted_root" <<'PY' 2>&1
import json, sys
try:
    doc = json.load(open(sys.argv[1], encoding="utf-8"))
except (UnicodeDecodeError, ValueError) as e:
    sys.exit(f"not JSON ({e})")
signed = doc.get("signed") if isinstance(doc, dict) else None
if not isinstance(signed, dict) or signed.get("_type") != "root" or not isinstance(doc.get("signatures"), list):
    sys.exit('not TUF root metadata (expected {"signed": {"_type": "root", ...}, "signatures": [...]})')
if not doc["signatures"]:
    sys.exit("the root carries no signature: sign it with `deltacache root sign` (or root init --sign-with)")
for key_id, key in (signed.get("keys") or {}).items():
    if isinstance(key, dict) and isinstance(key.get("keyval"), dict) and key["keyval"].get("private"):
        sys.exit(f"key {key_id} carries a private value: a root lists public keys only")
print(f"version {signed.get('version')}, expires {signed.get('expires')}, {len(signed.get('keys') or {})} keys, {len(doc['signatures'])} signatures")
PY
)"; then
    die "--trusted-root $trusted_root: $root_check"
fi
root_summary="$root_check"
case "$store" in
    s3://?* | file:///*) ;;
    *) die "--store $store: expected s3://bucket/prefix or file:///absolute/dir" ;;
esac
[[ -z "$bundle_seq" || "$bundle_seq" =~ ^[0-9]+$ ]] || die "--bundle-seq $bundle_seq: expected a whole number"
if [[ -e "$out" ]] && [[ -n "$(ls -A "$out")" ]]; then
    die "--out $out exists and is not empty: remove it or choose another directory"
fi

if ! $skip_build; then
    echo "prepare_artifacts.sh: cargo build --release --locked"
    (cd "$repo" && cargo build --release --locked)
fi
[[ -n "$binary" ]] || binary="$repo/target/release/deltacache"
[[ -x "$binary" ]] || die "no deltacache binary at $binary: run without --skip-build, or pass --binary PATH"

mkdir -p "$out/bin" "$out/scripts"
out="$(cd "$out" && pwd)"
# Copy the binary first so every later step, and the image, use the very same file even if
# target/release is rebuilt meanwhile.
install -m 0755 "$binary" "$out/bin/deltacache"
dc="$out/bin/deltacache"

if [[ -n "$catalogue" ]]; then
    build_args=(--input "$catalogue" --out "$out/bundle")
    [[ -z "$bundle_seq" ]] || build_args+=(--seq "$bundle_seq")
    [[ -z "$dataset" ]] || build_args+=(--dataset "$dataset")
    "$dc" build-base "${build_args[@]}"
else
    cp -R "$bundle_in" "$out/bundle"
fi

echo "prepare_artifacts.sh: trusted root $trusted_root: $root_summary"
echo "prepare_artifacts.sh: deltacache verify --store $store --trusted-root $trusted_root --bundle $out/bundle"
if ! verify_output="$("$dc" verify --store "$store" --trusted-root "$trusted_root" --bundle "$out/bundle" 2>&1)"; then
    echo "$verify_output" >&2
    if grep -q "holds no TUF repository" <<<"$verify_output"; then
        die "$store holds no TUF repository yet: an image pointed at it would never update. Create it first with \`deltacache repo init --store $store --root $trusted_root --key TARGETS.key --key ONLINE.key\`, then prepare again"
    fi
    die "the bundle does not verify against $store with the root $trusted_root: check that the root is one of this store's roots, and bake a bundle that continues the store's chain (deltacache compact), or publish to a new store"
fi
echo "$verify_output"

install -m 0644 "$trusted_root" "$out/root.json"
install -m 0644 "$repo/packer/deltacache.service" "$out/deltacache.service"
install -m 0755 "$repo/scripts/provision.sh" "$out/scripts/provision.sh"
install -d -m 0755 "$out/monitoring"
install -m 0644 "$repo"/packer/monitoring/* "$out/monitoring/"
# Fill in the store; every other key keeps the installed paths of packer/config.toml.
python3 - "$repo/packer/config.toml" "$out/config.toml" "$store" <<'PY'
import json, re, sys
src, dst, store = sys.argv[1:]
text = open(src, encoding="utf-8").read()
text, n = re.subn(r'(?m)^store = .*$', lambda _: "store = " + json.dumps(store), text)
if n != 1:
    sys.exit(f"prepare_artifacts.sh: expected exactly one `store = ...` line in {src}, found {n}")
with open(dst, "w", encoding="utf-8") as f:
    f.write(text)
PY
chmod 0644 "$out/config.toml"

read -r m_dataset m_seq m_items m_fingerprint < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
print(m["dataset"], m["seq"], m["n_items"], m["model_fingerprint"])' "$out/bundle/manifest.json")
echo "prepare_artifacts.sh: artefacts in $out: $("$dc" --version), dataset $m_dataset, seq $m_seq, $m_items items, model ${m_fingerprint:0:16}, store $store"
