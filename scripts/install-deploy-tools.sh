#!/usr/bin/env bash
# Installs the Python tools of the deploy tests (deploy/tests/requirements.txt: Helm's SDK,
# kubernetes-validate, hadolint, pytest) into a virtualenv outside the clone, by default
# ~/.cache/keelson/tools/venv (KEELSON_TOOLS_DIR moves it). Idempotent: when the venv already
# holds exactly these requirements it returns at once. No standard input needed.
set -euo pipefail
cd "$(dirname "$0")/.."

tools_dir="${KEELSON_TOOLS_DIR:-$HOME/.cache/keelson/tools}"
venv="$tools_dir/venv"
requirements=deploy/tests/requirements.txt
stamp="$venv/.keelson-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "install-deploy-tools: $python is missing (Debian: python3 python3-venv)" >&2; exit 1; }
mkdir -p "$tools_dir"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  "$python" -m venv "$venv" || { echo "install-deploy-tools: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
echo "installing the deploy test tools into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements" </dev/null
"$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml, jsonschema, pytest; helm_python.helm_sdk_version()'
echo "$want" > "$stamp"
