#!/usr/bin/env bash
# Installs the Debian packages of missing commands, for the scripts CI runs
# (validate_image.sh, rehearse_boot.sh, check_monitoring.sh): one place for the check, the
# apt-get call and the message that says what to install.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: apt_tools.sh --for NAME [--install] COMMAND[,COMMAND...]=PACKAGE ...

  --for NAME   the calling script, named in every message
  --install    install the missing packages with apt-get (sudo -n when not root);
               without it, exit 2 saying what to install
  COMMAND[,COMMAND...]=PACKAGE
               PACKAGE is needed unless every COMMAND is on PATH
  -h, --help   this text
USAGE
}

name=apt_tools.sh
install=false
needs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --for) [[ $# -ge 2 ]] || { echo "apt_tools.sh: --for needs a name" >&2; exit 2; }; name="$2"; shift 2 ;;
        --install) install=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *=*) needs+=("$1"); shift ;;
        *) usage >&2; echo "apt_tools.sh: not COMMAND=PACKAGE: $1" >&2; exit 2 ;;
    esac
done

missing_packages=()
for need in "${needs[@]}"; do
    IFS=, read -r -a commands <<<"${need%%=*}"
    for command in "${commands[@]}"; do
        if ! command -v "$command" >/dev/null; then
            missing_packages+=("${need#*=}")
            break
        fi
    done
done
[[ ${#missing_packages[@]} -gt 0 ]] || exit 0
if ! $install; then
    echo "$name: missing tools; install them with: apt-get install ${missing_packages[*]} (or pass --install, or set CI)" >&2
    exit 2
fi
echo "$name: apt-get install ${missing_packages[*]}"
apt_get=(apt-get)
[[ $EUID -eq 0 ]] || apt_get=(sudo -n apt-get)
"${apt_get[@]}" update -q
DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q --no-install-recommends "${missing_packages[@]}"
