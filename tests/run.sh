#!/usr/bin/env bash
# The project's test command (README): lint, Python tests, JavaScript tests.
#
# Python: $PYTHON if set, else the active virtual environment, else ./.venv (the README's), else python on PATH.
# Installs the project and the test extras (pytest, ruff) into that environment with pip. torch comes with the
# project's dependencies when it is missing: from PyPI that is the CUDA build on Linux (about 3 GB). To choose the
# build (e.g. CPU-only), install torch into the environment first; pip then keeps it. .ci/run does that on CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    py=python
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
elif command -v python >/dev/null 2>&1; then
    py=python
else
    py=python3
fi
echo "==> Python: $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

echo "==> Installing the project and the test tools (pip; the first time this downloads the dependencies)"
"$py" -m pip install --disable-pip-version-check --progress-bar on -e ".[test]"

echo "==> ruff check, ruff format --check"
"$py" -m ruff check .
"$py" -m ruff format --check .

echo "==> pytest"
"$py" -m pytest "$@"

if command -v npm >/dev/null 2>&1; then
    echo "==> JavaScript tests (npm)"
    (cd tests/js && npm ci --no-audit --no-fund && npm test)
else
    echo "npm not found: skipping the JavaScript tests" >&2
fi
