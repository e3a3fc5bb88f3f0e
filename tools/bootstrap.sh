#!/usr/bin/env bash
# Creates .venv beside the project and installs the project with its test extras.
# Idempotent: a second run only re-installs when pyproject.toml changed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.installed-pyproject"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$here/pyproject.toml" "$stamp"; then
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q -e "${here}[test]" --config-settings editable_mode=compat
    cp "$here/pyproject.toml" "$stamp"
fi
