#!/usr/bin/env bash
# Lays out everything an image bake copies: the release binary, a bundle checked against the
# delta store's chain, the config with the store filled in, the trusted public keys, the
# systemd unit and the provisioning script. Packer then only copies these files.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: prepare_artifacts.sh (--catalogue items.jsonl | --bundle DIR) --store URL
                            --trusted-keys FILE --out DIR
                            [--bundle-seq N] [--dataset NAME] [--skip-build] [--binary PATH]

  --catalogue FILE    JSONL items: `deltacache build-base` makes OUT/bundle from them
  --bundle DIR        an existing bundle instead (for example the output of
                      `deltacache compact`): copied to OUT/bundle as is
  --store URL         the delta store instances sync from: s3://bucket/prefix or file:///dir
  --trusted-keys FILE the publishers' public keys (.pub lines, never a secret key)
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
  OUT/bin/deltacache  OUT/bundle/  OUT/config.toml  OUT/trusted-keys.pub
  OUT/deltacache.service  OUT/scripts/provision.sh

The bundle is checked with `deltacache verify --bundle`: a bundle whose dataset, model or
seq does not continue the store's chain is refused before anything is baked. A store with
no head yet is accepted (the chain will start from this bundle).
EOF
}

die() {
    echo "prepare_artifacts.sh: $*" >&2
    exit 1
}

catalogue=""
bundle_in=""
store=""
trusted_keys=""
out=""
bundle_seq=""
dataset=""
skip_build=false
binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --catalogue | --bundle | --store | --trusted-keys | --out | --bundle-seq | --dataset | --binary)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            case "$1" in
                --catalogue) catalogue="$2" ;;
                --bundle) bundle_in="$2" ;;
                --store) store="$2" ;;
                --trusted-keys) trusted_keys="$2" ;;
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
[[ -n "$trusted_keys" ]] || missing+=("--trusted-keys FILE (the publishers' public keys, from deltacache keygen)")
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
[[ -f "$trusted_keys" ]] || die "--trusted-keys $trusted_keys: no such file"
if grep -q -e 'deltacache-ed25519-secret' "$trusted_keys"; then
    die "--trusted-keys $trusted_keys holds a secret key: pass the public half (KEYFILE.pub); secret keys never go into an image"
fi
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

echo "prepare_artifacts.sh: deltacache verify --store $store --bundle $out/bundle"
if ! verify_output="$("$dc" verify --store "$store" --trusted-keys "$trusted_keys" --bundle "$out/bundle" 2>&1)"; then
    echo "$verify_output" >&2
    die "the bundle does not verify against $store: bake a bundle that continues the store's chain (deltacache compact), or publish to a new store"
fi
echo "$verify_output"
if grep -q "no head yet" <<<"$verify_output"; then
    echo "prepare_artifacts.sh: $store has no head yet: nothing to verify the bundle against; the chain will start from this bundle"
fi

install -m 0644 "$trusted_keys" "$out/trusted-keys.pub"
install -m 0644 "$repo/packer/deltacache.service" "$out/deltacache.service"
install -m 0755 "$repo/scripts/provision.sh" "$out/scripts/provision.sh"
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
