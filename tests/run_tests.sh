#!/usr/bin/env bash
# Install the test dependencies into ./.venv (once) and run the test suite.
# Integration tests against a running WebUI are skipped unless TILESAMPLER_WEBUI_URL is set
# (see tests/integration/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TILESAMPLER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PY" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps stable-diffusion-sdkit==2.1.5
exec "$PY" -m pytest -q tests "$@"
