#!/usr/bin/env bash
# The main job on the embedded default (SQLite + local disk, nothing else):
# builds satchel and runs the Azure-style fan-in pipeline (examples/fan-in.yml)
# with the local runner. Two parallel jobs each publish a named artifact; the
# last stage downloads both and prints them. Pass another pipeline file to
# run that instead; DATA_DIR keeps the data (default: a fresh temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked -p satchel-cli
bin="$PWD/target/debug/satchel"
pipeline=${1:-examples/fan-in.yml}
if [ -n "${DATA_DIR:-}" ]; then
  data=$DATA_DIR
else
  data=$(mktemp -d)
  trap 'rm -rf "$data"' EXIT
fi
echo "== satchel run $pipeline (data dir $data)"
"$bin" run --data-dir "$data" "$pipeline"
