#!/usr/bin/env bash
# What one replica costs, for the capacity model in docs/deploy.md: a
# release `satchel serve` on the test PostgreSQL and a prefix of the test
# Garage bucket (scripts/services.sh), measured from the outside.
#
# - Per operation (an upload of 1, of 100 files of 4 KiB, of one
#   CAP_BIG_MB file; their downloads; one search): PostgreSQL transactions
#   and rows (pg_stat_database of a database of its own), and object-store
#   requests by kind (Garage's own request counters).
# - Rates: requests/s of one replica for a search and for a small file's
#   content, with wrk (CAP_CONNECTIONS connections for CAP_SECONDS), and
#   MB/s of the big upload and download through the CLI.
#
#   CAP_BIG_MB       big file, MiB                 (default 256)
#   CAP_SECONDS      seconds per wrk run            (default 10)
#   CAP_CONNECTIONS  wrk connections                (default 32)
#   SATCHEL_BIN      binary                         (default target/release/satchel, built)
#
# Needs wrk and psql (installed from Debian packages when missing, as root).
# The table is printed and written to target/bench-capacity.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
BIG_MB=${CAP_BIG_MB:-256}
SECONDS_PER_RUN=${CAP_SECONDS:-10}
CONNS=${CAP_CONNECTIONS:-32}
bin=${SATCHEL_BIN:-$repo/target/release/satchel}
die() { echo "capacity: $*" >&2; exit 1; }
log() { echo "capacity: $*" >&2; }
[[ $BIG_MB =~ ^[1-9][0-9]*$ ]] || die "CAP_BIG_MB must be a positive integer"
if [[ -z ${SATCHEL_BIN:-} ]]; then
  log "building the release binary..."
  (cd "$repo" && cargo build --release --locked --quiet -p satchel-cli) || die "release build failed"
fi
[[ -x $bin ]] || die "no satchel binary at $bin"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
for tool in wrk psql; do
  if ! command -v "$tool" > /dev/null; then
    pkg=$tool; [[ $tool == psql ]] && pkg=postgresql-client
    log "installing $pkg"
    apt-get update -qq && apt-get install -y -qq "$pkg" > /dev/null
  fi
done
bash "$repo/scripts/services.sh" >&2
# shellcheck disable=SC1091
source "${SATCHEL_SERVICES_DIR:-/tmp/satchel-test-services}/env"

work=$(mktemp -d "${TMPDIR:-/tmp}/satchel-capacity.XXXXXX")
server=""
db="capacity_$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pg_base=${SATCHEL_TEST_POSTGRES_URL%/*}
cleanup() {
  if [[ -n $server ]]; then { kill "$server" && wait "$server"; } 2> /dev/null || true; fi
  psql -q "$SATCHEL_TEST_POSTGRES_URL" -c "DROP DATABASE IF EXISTS $db" > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$SATCHEL_TEST_POSTGRES_URL" -c "CREATE DATABASE $db" > /dev/null
prefix="capacity-${db#capacity_}"
store="s3://satchel-test/$prefix?endpoint=http://127.0.0.1:39000&region=garage&allow_http=true"
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
SATCHEL_ADMIN_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --database "$pg_base/$db" --store "$store" > "$work/server.out" 2> "$work/server.err" &
server=$!
for _ in $(seq 100); do
  grep -q "^listening on " "$work/server.out" 2> /dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/server.out" | head -1)
[[ -n $url ]] || die "the server did not start: $(cat "$work/server.err")"
export SATCHEL_URL=$url SATCHEL_TOKEN=$token SATCHEL_PIPELINE=cap SATCHEL_JOB=build SATCHEL_STEP=s

# Counters: PostgreSQL's for this database, Garage's per request kind.
pg() {
  # An idle backend reports its statistics within PostgreSQL's idle
  # interval (10 s): wait them out, so each row holds all of its own.
  sleep 11
  psql -At -F' ' "$pg_base/$db" -c \
    "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched, tup_inserted + tup_updated + tup_deleted
     FROM pg_stat_database WHERE datname = current_database()"
}
# Garage's counters are the whole instance's: run this with nothing else
# using the test Garage (the test suite, another bench).
s3() {
  local m
  m=$(curl -sf http://127.0.0.1:39003/metrics) || die "Garage's metrics (:39003) do not answer"
  grep -q '^api_s3_request_counter' <<< "$m" || die "Garage's metrics have no api_s3_request_counter"
  awk '
    /^api_s3_request_counter/ { split($1, a, "\""); n[a[2]] = $2 }
    END { printf "%d %d %d %d %d\n", n["PutObject"], n["GetObject"], n["HeadObject"], n["ListObjectsV2"], n["DeleteObject"] }' <<< "$m"
}
rows=()
# measure LABEL COMMAND...: one row of deltas.
measure() {
  local label=$1; shift
  local p0 s0 p1 s1 t0 t1
  p0=$(pg); s0=$(s3)
  t0=$(date +%s.%N)
  "$@" > /dev/null
  t1=$(date +%s.%N)
  p1=$(pg); s1=$(s3)
  # The statistics queries are transactions of their own: one each.
  rows+=("$(awk -v l="$label" -v p0="$p0" -v p1="$p1" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" 'BEGIN {
    split(p0, a, " "); split(p1, b, " "); split(s0, c, " "); split(s1, d, " ")
    printf "| %s | %.2f | %d | %d | %d | %d | %d | %d | %d |", l, t1 - t0, b[1] - a[1] - 1, b[2] - a[2], b[3] - a[3],
      d[1] - c[1], d[2] - c[2], d[3] - c[3], d[4] - c[4]
  }')")
}

mkdir -p "$work/one" "$work/many/m" "$work/big"
head -c 4096 /dev/urandom > "$work/one/a.bin"
for i in $(seq -w 1 100); do head -c 4096 /dev/urandom > "$work/many/m/f$i.bin"; done
head -c $((BIG_MB << 20)) /dev/urandom > "$work/big/big.bin"
# A first upload creates the pipeline and run; not measured.
cd "$work/one"
head -c 4096 /dev/urandom > w.bin
SATCHEL_RUN=1 "$bin" artifact upload --quiet --name warm w.bin > /dev/null
rm w.bin
export SATCHEL_RUN=2
measure "upload 1 file of 4 KiB" "$bin" artifact upload --quiet --name one a.bin
cd "$work/many"
measure "upload 100 files of 4 KiB" "$bin" artifact upload --quiet --name many 'm/**'
cd "$work/big"
measure "upload 1 file of $BIG_MB MiB" "$bin" artifact upload --quiet --name big big.bin
cd "$work"
measure "search one file" "$bin" artifact search a.bin
measure "download 1 file of 4 KiB" "$bin" artifact download a.bin out1 --name one
measure "download 100 files of 4 KiB" "$bin" artifact download 'm/**' out100 --name many
measure "download 1 file of $BIG_MB MiB" "$bin" artifact download big.bin outbig --name big
cmp big/big.bin outbig/big.bin || die "the big download differs"
cmp many/m/f050.bin out100/m/f050.bin || die "a small download differs"

# Rates with wrk: a search, and one small file's content, 2 threads.
search_url="$url/api/v1/pipelines/cap/runs/2/search?query=m/f050.bin"
file_id=$(curl -s -H "Authorization: Bearer $token" "$search_url" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["id"])')
rate() {
  wrk -t2 -c"$CONNS" -d"${SECONDS_PER_RUN}s" -H "Authorization: Bearer $token" "$1" |
    awk '/Requests\/sec/ { r = $2 } /Latency/ && !l { l = $2 } /Non-2xx/ { bad = $NF }
      END { printf "%s req/s, mean latency %s%s", r, l, (bad ? ", NON-2XX " bad : "") }'
}
search_rate=$(rate "$search_url")
content_rate=$(rate "$url/api/v1/files/$file_id/content")
objects=$(s3) # for the record: requests so far

out="$repo/target/bench-capacity.md"
mkdir -p "$(dirname "$out")"
{
  echo "Capacity inputs: one replica on PostgreSQL (test cluster) and Garage, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| operation | seconds | PG transactions | PG rows read | PG rows written | S3 PUT | S3 GET | S3 HEAD | S3 LIST |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "- search (GET …/search?query=m/f050.bin), $CONNS connections: $search_rate"
  echo "- one 4 KiB file's content (GET /files/ID/content), $CONNS connections: $content_rate"
  echo "- big file: $BIG_MB MiB; MB/s = $BIG_MB × 1.048576 / seconds of its row"
  echo "- Garage counters at the end (PUT GET HEAD LIST DELETE): $objects"
} | tee "$out"
