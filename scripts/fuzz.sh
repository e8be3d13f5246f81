#!/usr/bin/env bash
# Runs the fuzz targets for a while each (not part of the test suite,
# which only replays their corpora; see fuzz/README.md).
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]
# Default: 600 seconds for every target. New corpus entries land in
# fuzz/corpus/NAME, crashes in fuzz/artifacts/NAME; a summary line per
# target (execs, corpus size, crashes) goes to stdout and fuzz/last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v satchel-fuzz-bins)
fi
cd fuzz
# Built once, then run directly: a source change during a long run does
# not rebuild anything under the running targets.
echo "== building the fuzz targets (nightly, sanitizers)"
cargo +nightly fuzz build
bin=target/x86_64-unknown-linux-gnu/release
: > last-run.txt
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  status=0
  # One job on one core; the other stays free for builds.
  "$bin/$t" "corpus/$t" \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  line="$t: ${execs:-?} execs in ${secs}s, corpus $(find "corpus/$t" -type f | wc -l) files, $crashes crash files, exit $status"
  echo "$line" | tee -a last-run.txt
  if [ "$status" -ne 0 ]; then tail -40 "$log"; fi
  rm -f "$log"
done
