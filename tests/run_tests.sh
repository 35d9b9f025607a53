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
# tests/test_javascript_page.py runs javascript/ in headless Chromium (Debian's package; it
# skips without one). With TILESAMPLER_INSTALL_CHROMIUM=1 (.ci/run sets it), as root, install
# it when missing (about a minute); a failed install only makes that test skip.
if [ "${TILESAMPLER_INSTALL_CHROMIUM:-}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! command -v chromium >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "could not install chromium: tests/test_javascript_page.py will skip"
fi
exec "$PY" -m pytest -q tests "$@"
