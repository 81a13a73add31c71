#!/usr/bin/env bash
# Catalogue (or bundle) in, AMI id out: prepare_artifacts.sh, then packer validate and
# packer build with the dataset, bundle seq and model fingerprint read from the bundle's
# manifest.json.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: bake.sh [--validate-only] [--artifacts DIR | PREPARE ARGS...] [--var NAME=VALUE ...]
               [--image-version V] [--manifest-out FILE]

  PREPARE ARGS       passed to prepare_artifacts.sh: (--catalogue FILE | --bundle DIR)
                     --store URL --trusted-root root.json [--out DIR] [--bundle-seq N]
                     [--dataset NAME] [--skip-build] [--binary PATH]
                     (--out defaults to a new temporary directory)
  --artifacts DIR    use artefacts already laid out by prepare_artifacts.sh instead
  --validate-only    run packer validate and stop (no AWS call, no image)
  --var NAME=VALUE   a Packer variable (region, instance_type, source_ami_owner,
                     source_ami_name, ssh_username, root_device_name, image_name, ...);
                     repeatable
  --image-version V  the AMI's version [default: UTC time and bundle seq, e.g.
                     20261125T184500Z-seq42]
  --manifest-out F   where Packer writes its manifest with the AMI id
                     [default: packer-manifest.json in the current directory]
  -h, --help         this text

On success the last line is `bake.sh: image REGION:AMI-ID`. AWS credentials come from the
environment or profile of whoever runs the bake; none of them reach the image.
Packer 1.7+ runs `packer init` on packer/ and builds the directory (plugins.pkr.hcl pins
the Amazon plugin); Packer 1.6 builds packer/deltacache.pkr.hcl alone.
EOF
}

die() {
    echo "bake.sh: $*" >&2
    exit 1
}

validate_only=false
artifacts=""
out=""
image_version=""
manifest_out="$PWD/packer-manifest.json"
prepare_args=()
packer_vars=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --validate-only) validate_only=true; shift ;;
        --artifacts) [[ $# -ge 2 ]] || die "--artifacts needs a directory"; artifacts="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out="$2"; shift 2 ;;
        --var)
            [[ $# -ge 2 && "$2" == *=* ]] || die "--var needs NAME=VALUE"
            packer_vars+=(-var "$2"); shift 2 ;;
        --image-version) [[ $# -ge 2 ]] || die "--image-version needs a value"; image_version="$2"; shift 2 ;;
        --manifest-out) [[ $# -ge 2 ]] || die "--manifest-out needs a file"; manifest_out="$2"; shift 2 ;;
        --skip-build) prepare_args+=("$1"); shift ;;
        --trusted-keys | --trusted-keys=*)
            die "--trusted-keys is gone: instances now trust a TUF root. Pass --trusted-root root.json (from \`deltacache root init\`, or a later root of the store's repository, which \`deltacache repo init\` creates)" ;;
        --catalogue | --bundle | --store | --trusted-root | --bundle-seq | --dataset | --binary)
            [[ $# -ge 2 ]] || die "$1 needs a value (see prepare_artifacts.sh --help)"
            prepare_args+=("$1" "$2"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v packer >/dev/null || die "packer not found: apt-get install packer (Debian 12 ships 1.6.6), or install Packer 1.7+ from HashiCorp"

if [[ -n "$artifacts" ]]; then
    [[ ${#prepare_args[@]} -eq 0 && -z "$out" ]] || die "--artifacts uses prepared artefacts: drop the prepare_artifacts.sh arguments"
else
    [[ ${#prepare_args[@]} -gt 0 ]] || die "missing inputs: pass --artifacts DIR, or the prepare_artifacts.sh arguments (--catalogue FILE --store URL --trusted-root root.json)"
    if [[ -z "$out" ]]; then
        out="$(mktemp -d "${TMPDIR:-/tmp}/deltacache-artifacts.XXXXXX")"
        echo "bake.sh: artefacts in $out"
    fi
    "$repo/scripts/prepare_artifacts.sh" "${prepare_args[@]}" --out "$out"
    artifacts="$out"
fi
artifacts="$(cd "$artifacts" && pwd)"

missing=()
for f in bin/deltacache bundle/manifest.json config.toml root.json deltacache.service scripts/provision.sh; do
    [[ -e "$artifacts/$f" ]] || missing+=("$f")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    for f in "${missing[@]}"; do echo "bake.sh: missing in $artifacts: $f" >&2; done
    die "lay the artefacts out with scripts/prepare_artifacts.sh --out $artifacts"
fi

# The image's tags come from the bundle itself, never from what the caller believes it is.
read -r dataset bundle_seq model_fingerprint < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
print(m["dataset"], m["seq"], m["model_fingerprint"])' "$artifacts/bundle/manifest.json")
binary_version="$("$artifacts/bin/deltacache" --version | awk '{print $2}')"
git_revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$git_revision" != unknown ]] && [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    git_revision="$git_revision-dirty"
fi
[[ -n "$image_version" ]] || image_version="$(date -u +%Y%m%dT%H%M%SZ)-seq$bundle_seq"

vars=(
    -var "binary_path=$artifacts/bin/deltacache"
    -var "bundle_dir=$artifacts/bundle"
    -var "config_file=$artifacts/config.toml"
    -var "trusted_root_file=$artifacts/root.json"
    -var "service_file=$artifacts/deltacache.service"
    -var "provision_script=$artifacts/scripts/provision.sh"
    -var "monitoring_dir=$artifacts/monitoring"
    -var "image_version=$image_version"
    -var "git_revision=$git_revision"
    -var "binary_version=$binary_version"
    -var "dataset=$dataset"
    -var "bundle_seq=$bundle_seq"
    -var "model_fingerprint=$model_fingerprint"
    -var "manifest_output=$manifest_out"
    "${packer_vars[@]}"
)

# Packer 1.7+ reads the whole directory (with plugins.pkr.hcl); 1.6 refuses the packer block.
packer_version="$(packer version | head -n 1 | sed -E 's/^Packer v?([0-9]+)\.([0-9]+).*/\1 \2/')"
read -r major minor <<<"$packer_version"
if [[ "$major" -gt 1 || ( "$major" -eq 1 && "$minor" -ge 7 ) ]]; then
    template="$repo/packer"
    packer init "$template"
else
    template="$repo/packer/deltacache.pkr.hcl"
fi

echo "bake.sh: dataset $dataset, seq $bundle_seq, model ${model_fingerprint:0:16}, deltacache $binary_version, git $git_revision, image version $image_version"
packer validate "${vars[@]}" "$template"
if $validate_only; then
    echo "bake.sh: template valid (--validate-only: nothing built)"
    exit 0
fi

packer build -color=false "${vars[@]}" "$template"
image="$(python3 -c '
import json, sys
builds = json.load(open(sys.argv[1]))["builds"]
print(builds[-1]["artifact_id"])' "$manifest_out")"
echo "bake.sh: image $image"
