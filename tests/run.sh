#!/usr/bin/env bash
# The project's test command (README): lint, Python tests, JavaScript tests.
# Installs what the tests need into the current Python environment; needs torch installed (any version >= 2.1).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m ruff check .
python -m ruff format --check .
python -m pytest "$@"

if command -v npm >/dev/null 2>&1; then
    (cd tests/js && npm ci --silent --no-audit --no-fund && npm test --silent)
else
    echo "npm not found: skipping the JavaScript tests" >&2
fi
