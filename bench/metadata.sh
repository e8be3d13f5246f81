#!/usr/bin/env bash
# Satchel's metadata benchmark (issue 14, part 3): a run with 100,000 files
# in 1,000 artifacts and a pipeline with 10,000 runs, on SQLite and on
# PostgreSQL side by side, p50/p99 of every search and list query against
# the goal of p99 <= 20 ms, then a 10,000-file manifest commit (<= 0.5 s).
# See bench/README.md.
#
#   META_FILES      files in the big run                 (default 100000)
#   META_ARTIFACTS  artifacts they are spread over       (default 1000)
#   META_RUNS       runs of the second pipeline          (default 10000)
#   META_REPS       timed calls per query                (default 200)
#   META_BACKENDS   comma-separated: sqlite,postgres     (default both)
#   META_OUT        where the table is written too       (default target/bench-metadata.md)
#   META_KEEP       1: keep the PostgreSQL database for EXPLAIN (prints its URL)
#   META_PHASES     1: print the phases of each manifest commit
#
# PostgreSQL is the test suite's own (scripts/services.sh starts or reuses
# it on 127.0.0.1:39400); each backend gets a fresh database.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${META_OUT:-$repo/target/bench-metadata.md}
cd "$repo"

if [[ ${META_BACKENDS:-sqlite,postgres} == *postgres* ]]; then
  bash scripts/services.sh
  # shellcheck disable=SC1091 # written by scripts/services.sh
  source /tmp/satchel-test-services/env
fi
cargo build --release -q -p satchel-db --example metadata_scale
mkdir -p "$(dirname "$out")"
{
  echo "# metadata benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
  echo
  "${CARGO_TARGET_DIR:-target}/release/examples/metadata_scale"
  echo
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
