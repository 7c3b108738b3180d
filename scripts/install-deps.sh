#!/usr/bin/env bash
# Installs the Debian packages keelson needs to build (and, with --test, to test) when missing.
# Runs without a terminal: CI has no standard input.
set -euo pipefail

packages=(libclang-dev clang protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  packages+=(etcd-server etcd-client)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
