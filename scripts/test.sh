#!/usr/bin/env bash
# Install lbproxy (a plain, non-editable install) into fresh virtual
# environments and run the whole test suite: lint, types, and the trial
# suite on CPython, then the trial suite on PyPy 3.9.
#
#   bash scripts/test.sh            CPython and PyPy
#   bash scripts/test.sh --cpython  CPython only (quicker, for development)
#
# Missing system tools are installed with apt-get when run as root (curl;
# nghttp2-client's h2load for the HTTP/2 tests;
# pypy3; systemd's systemd-analyze and systemd-socket-activate for the unit
# and socket-activation tests; chromium and chromium-driver for the
# dashboard's browser test); otherwise the script says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

want_pypy=yes
[ "${1:-}" = "--cpython" ] && want_pypy=no

need_packages=()
command -v curl >/dev/null || need_packages+=(curl)
command -v h2load >/dev/null || need_packages+=(nghttp2-client)
command -v systemd-analyze >/dev/null || need_packages+=(systemd)
command -v systemd-socket-activate >/dev/null || need_packages+=(systemd)
command -v chromium >/dev/null || need_packages+=(chromium)
command -v chromedriver >/dev/null || need_packages+=(chromium-driver)
if [ "$want_pypy" = yes ] && ! command -v pypy3 >/dev/null; then
    need_packages+=(pypy3 pypy3-venv)
fi
if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${need_packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq $(printf '%s\n' "${need_packages[@]}" | sort -u) >/dev/null
    else
        echo "missing: ${need_packages[*]} (install them, e.g. apt-get install ${need_packages[*]})" >&2
        exit 1
    fi
fi

quiet_pip() { "$@" 2>&1 | grep -vE '^(WARNING: Location|  WARNING)' || true; }

echo "== CPython: install"
# A build/ folder left by an earlier in-tree build would put modules that
# have since moved or gone into the wheel.
rm -rf build
[ -x .venv/bin/python ] || python3 -m venv .venv
quiet_pip .venv/bin/pip install -q --upgrade '.[dev]'
# Always the code of this checkout, even when the version number is unchanged.
quiet_pip .venv/bin/pip install -q --force-reinstall --no-deps .

# The way the README installs it: a wheel built from this checkout, into a
# fresh virtual environment, run from another directory (so nothing comes
# from the source tree).
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
check_wheel() {
    local interpreter=$1 venv="$wheel_dir/venv-$1"
    echo "== $interpreter: the built wheel in a fresh virtual environment"
    "$interpreter" -m venv "$venv"
    quiet_pip "$venv/bin/pip" install -q "$wheel_dir"/lbproxy-*.whl
    (cd "$wheel_dir" && "$venv/bin/lbproxy" check "$OLDPWD/etc/lbproxy.ini" \
        && "$venv/bin/twistd" lbproxy --help >/dev/null \
        && "$venv/bin/lbproxy" --version)
}
echo "== CPython: build the wheel"
.venv/bin/python -m build --wheel --outdir "$wheel_dir" . >"$wheel_dir/build.log" 2>&1 \
    || { cat "$wheel_dir/build.log"; exit 1; }
check_wheel python3

echo "== CPython: ruff"
.venv/bin/ruff check lbproxy tests twisted bench
.venv/bin/ruff format --check lbproxy tests twisted bench

echo "== CPython: mypy"
.venv/bin/mypy

echo "== CPython: trial"
.venv/bin/python -m twisted.trial tests

if [ "$want_pypy" = yes ]; then
    echo "== PyPy: install"
    [ -x .venv-pypy/bin/python ] || pypy3 -m venv .venv-pypy
    quiet_pip .venv-pypy/bin/pip install -q --upgrade '.[test]'
    quiet_pip .venv-pypy/bin/pip install -q --force-reinstall --no-deps .
    check_wheel pypy3
    echo "== PyPy: trial (all but the dashboard's browser test, which runs on CPython)"
    modules=$(find tests -name 'test_*.py' ! -path tests/test_dashboard.py | sort | sed 's#/#.#g; s#\.py$##')
    # shellcheck disable=SC2086
    .venv-pypy/bin/python -m twisted.trial $modules
fi
