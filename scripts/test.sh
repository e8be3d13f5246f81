#!/usr/bin/env bash
# The whole test suite: unit, property, conformance and end-to-end tests.
# End-to-end tests start the real `satchel` binary on 127.0.0.1:0 with temp
# data dirs. What they need from outside is installed here, never silently
# skipped: Node.js and the real @actions/artifact clients (tests/gha),
# Chromium and playwright-core (tests/browser), schemathesis (the API
# against its OpenAPI description), strace
# (the crash-durability test), unzip (the zip archive tests), and
# the servers of the backend conformance tests (scripts/services.sh:
# Garage for S3, Azurite for Azure Blob, nginx for WebDAV, fake-gcs-server
# for GCS, PostgreSQL for the metadata store and the replica tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# Node.js (v20 here) for the GitHub Actions protocol test.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing Node.js from Debian packages"
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# strace, for the test that replays the server's file system calls
# against a crash (crates/cli/tests/durability.rs).
if ! command -v strace >/dev/null; then
  echo "== installing strace from Debian packages"
  apt-get update -qq && apt-get install -y -qq strace
fi
# unzip, which checks the zip archives the server streams
# (crates/cli/tests/ui.rs; Python's zipfile checks them too).
if ! command -v unzip >/dev/null; then
  echo "== installing unzip from Debian packages"
  apt-get update -qq && apt-get install -y -qq unzip
fi
# Debian's Chromium, which the browser tests drive headless
# (crates/cli/tests/browser.rs).
if ! [ -x /usr/bin/chromium ]; then
  echo "== installing chromium from Debian packages"
  apt-get update -qq && apt-get install -y -qq chromium
fi
# The real clients, pinned by tests/gha/package-lock.json; reused when
# already installed for this lock file.
if ! cmp -s tests/gha/package-lock.json tests/gha/node_modules/.package-lock.json 2>/dev/null \
   && ! [ tests/gha/node_modules/.installed -nt tests/gha/package-lock.json ]; then
  echo "== installing @actions/artifact clients (npm ci)"
  (cd tests/gha && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed)
fi

# playwright-core, pinned by tests/browser/package-lock.json (it drives the
# system's /usr/bin/chromium; no browser is downloaded).
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.package-lock.json 2>/dev/null \
   && ! [ tests/browser/node_modules/.installed -nt tests/browser/package-lock.json ]; then
  echo "== installing playwright-core (npm ci)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed)
fi

# schemathesis (PyPI), pinned, in its own virtualenv; it checks the API
# against its OpenAPI description (crates/cli/tests/openapi.rs).
SCHEMATHESIS_VERSION=4.32.5
ST_VENV="${HOME}/.cache/satchel-schemathesis"
if ! "$ST_VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION (pip, in $ST_VENV)"
  rm -rf "$ST_VENV"
  python3 -m venv "$ST_VENV" || {
    apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$ST_VENV"
  }
  "$ST_VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export SATCHEL_SCHEMATHESIS="$ST_VENV/bin/st"

# Storage servers on loopback, reused when already running.
bash scripts/services.sh
# shellcheck disable=SC1091
source "${SATCHEL_SERVICES_DIR:-/tmp/satchel-test-services}/env"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
