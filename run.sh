#!/usr/bin/env bash
# One entry point for a fresh machine: creates/reuses .venv, installs torch pinned first, then r1kit.
#   ./run.sh demo [args]   the whole R1 recipe at toy scale (see README)
#   ./run.sh test [args]   lint + the test suite (what CI runs)
#   ./run.sh bench NAME    a benchmark script from benchmarks/
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU wheel on this machine).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    local stamp="$VENV/.r1kit-setup"
    local want
    want="$TORCH_SPEC $(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        python -m pip install -q --upgrade pip
        # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
        python -m pip install -q "$TORCH_SPEC"
        python -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

# The browser test drives Debian's chromium through chromedriver; install them when we can.
ensure_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing chromium + chromium-driver for the browser test" >&2
        apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ||
            echo "warning: could not install chromium; the browser test will be skipped" >&2
    else
        echo "note: chromium is not installed (needs root); the browser test will be skipped" >&2
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    demo)
        setup
        exec r1kit demo "$@"
        ;;
    test)
        setup
        ensure_chromium
        ruff check r1kit tests benchmarks
        ruff format --check r1kit tests benchmarks
        exec python -m pytest -q "$@"
        ;;
    bench)
        setup
        name=${1:?usage: ./run.sh bench NAME}
        shift
        exec python "benchmarks/$name.py" "$@"
        ;;
    *)
        echo "usage: ./run.sh demo|test|bench NAME" >&2
        exit 2
        ;;
esac
