#!/usr/bin/env bash
# Installs the Debian packages keelson needs to build (and, with --test, to test) when missing.
# Runs without a terminal: CI has no standard input.
set -euo pipefail

# libprotobuf-dev: protoc's well-known types (google/protobuf/descriptor.proto, struct.proto),
# which etcd-client's build script imports; protobuf-compiler only recommends it, and
# recommendations are not installed below.
packages=(libclang-dev clang protobuf-compiler libprotobuf-dev)
if [ "${1:-}" = "--test" ]; then
  # etcd and etcdctl: the reference; prometheus: promtool (checks /metrics and runs etcd's
  # alert rules); jsonnet: compiles the etcd mixin shipped in etcd-server's docs.
  # openssl: offers single TLS cipher suites in the TLS tests.
  packages+=(etcd-server etcd-client prometheus jsonnet openssl)
  # python3-etcd3gw: a real client of the JSON gateway (compat-tests/tests/gateway_clients.rs).
  packages+=(python3-etcd3gw)
  # patroni and postgresql: real Patroni (its etcd3 DCS) running PostgreSQL through the gateway
  # (compat-tests/tests/gateway_clients.rs).
  packages+=(patroni postgresql)
  # The deploy tests (make deploy-test): a Python venv for Helm's SDK, kubernetes-validate and
  # hadolint (scripts/install-deploy-tools.sh), systemd-analyze for the unit file.
  packages+=(python3 python3-venv systemd)
fi
if [ "${1:-}" = "--bench-go" ]; then
  # make bench-go: Debian's Go (1.19) builds bench/go-load offline, in GOPATH mode, against
  # etcd's own client (clientv3 3.4.23) and its dependencies from golang-etcd-server-dev.
  packages+=(golang-go golang-etcd-server-dev)
fi
deploy_tools() {
  if [ "${1:-}" = "--test" ]; then "$(dirname "$0")/install-deploy-tools.sh"; fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  deploy_tools "${1:-}"
  exit 0
fi

echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
# Packages with a daemon (etcd-server, prometheus) must not start it: a policy-rc.d that
# refuses every start, only for the time of the install when the machine has none.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
deploy_tools "${1:-}"
