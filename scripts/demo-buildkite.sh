#!/usr/bin/env bash
# Buildkite-style walkthrough on the embedded default: builds satchel, starts a server
# (SQLite + local disk, nothing else), uploads from two jobs, downloads in
# a third, and prints what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked -p satchel-cli
bin="$PWD/target/debug/satchel"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== starting satchel serve (data dir $work/data)"
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/server.out"
export SATCHEL_URL=$(sed -n 's/^listening on //p' "$work/server.out")
export SATCHEL_TOKEN=$(cat "$work/data/admin.token")
export SATCHEL_PIPELINE=demo SATCHEL_RUN=1

echo; echo "== job build-linux: builds and uploads dist/ and logs"
mkdir -p "$work/job1/dist" "$work/job1/logs"; cd "$work/job1"
echo "From build-linux" > dist/app-linux.txt; echo "build log" > logs/build.log
SATCHEL_JOB=build-linux SATCHEL_STEP=compile "$bin" artifact upload "dist/*;logs/**"

echo; echo "== job build-mac: uploads its own dist/ and a log with the same path"
mkdir -p "$work/job2/dist" "$work/job2/logs"; cd "$work/job2"
echo "From build-mac" > dist/app-mac.txt; echo "mac log" > logs/build.log
SATCHEL_JOB=build-mac SATCHEL_STEP=compile "$bin" artifact upload "dist/*" "logs/build.log"

echo; echo "== job deploy: searches and downloads"
mkdir -p "$work/job3"; cd "$work/job3"
export SATCHEL_JOB=deploy
"$bin" artifact search '**'
"$bin" artifact download 'dist/*' workspace
echo "-- logs/build.log without scoping is ambiguous:"
"$bin" artifact download logs/build.log workspace 2>&1 | sed 's/^/   /' || true
echo "-- scoped with --job build-mac:"
"$bin" artifact download logs/build.log workspace --job build-mac
echo; echo "== what landed in job deploy's workspace"
find workspace -type f | sort | while read -r f; do printf '%s: %s\n' "$f" "$(cat "$f")"; done
echo "sha256 of dist/app-linux.txt: $("$bin" artifact shasum dist/app-linux.txt)"
