#!/usr/bin/env bash
# Satchel benchmark: satchel and this machine's own limits, side by side, in
# one run. See bench/README.md for what is measured and how to read it.
#
#   BENCH_BIG_MB       size of the big file in MiB          (default 1024)
#   BENCH_SMALL_FILES  number of 4 KiB files                (default 10000)
#   BENCH_DIR          scratch root, same disk as the data  (default target/bench-tmp)
#   SATCHEL_BIN        satchel binary                       (default target/release/satchel)
#
# Builds target/release/satchel first unless SATCHEL_BIN is given.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL=${BENCH_SMALL_FILES:-10000}
SMALL_SIZE=4096
bin=${SATCHEL_BIN:-$repo/target/release/satchel}
root=${BENCH_DIR:-$repo/target/bench-tmp}

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

[[ $BIG_MB =~ ^[1-9][0-9]*$ ]] || die "BENCH_BIG_MB must be a positive integer, got '$BIG_MB'"
[[ $SMALL =~ ^[1-9][0-9]*$ ]] || die "BENCH_SMALL_FILES must be a positive integer, got '$SMALL'"
if [[ -z ${SATCHEL_BIN:-} ]]; then
  log "building the release binary (cargo build --release -p satchel-cli)..."
  (cd "$repo" && cargo build --release --locked --quiet -p satchel-cli) || die "release build failed"
fi
[[ -x $bin ]] || die "no satchel binary at $bin; run: cargo build --release -p satchel-cli"
for tool in curl tar dd python3 awk cmp diff; do
  command -v "$tool" > /dev/null || die "needs '$tool' on PATH"
done
if [[ -n $(find "$repo/crates" -newer "$bin" -name '*.rs' -print -quit) ]]; then
  log "warning: sources under crates/ are newer than $bin (rebuild for current numbers)"
fi

mkdir -p "$root"
work=$(mktemp -d "$root/run.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# timed VAR CMD...: syncs, runs CMD, stores the elapsed seconds in VAR. A
# failing CMD stops the benchmark with its name.
timed() {
  local var=$1 t0 t1 rc=0
  shift
  sync
  t0=$(now)
  "$@" || rc=$?
  t1=$(now)
  ((rc == 0)) || die "step failed (exit $rc): $*"
  printf -v "$var" '%s' "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')"
}
# satchel ARGS...: the binary, with stderr kept for the failure message.
satchel() {
  local rc=0
  "$bin" "$@" 2> "$work/satchel.err" || rc=$?
  if ((rc != 0)); then
    echo "bench: satchel $* failed (exit $rc):" >&2
    sed 's/^/  /' "$work/satchel.err" >&2
    return "$rc"
  fi
}
# json FILE KEY: a top-level field of a JSON object.
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# expect WHAT ACTUAL WANTED
expect() { [[ $2 == "$3" ]] || die "$1: got $2, expected $3"; }
# api_requests: the server's /api/v1 request counter from /metrics, or empty
# when this build has no /metrics.
api_requests() { curl -sf "$SATCHEL_URL/metrics" 2> /dev/null | awk '$1 == "satchel_api_requests_total" { print $2 }'; }
# counted VAR CMD...: `timed VAR CMD...`, and the API requests CMD made in VAR_req.
counted() {
  local before after
  before=$(api_requests)
  timed "$@"
  after=$(api_requests)
  if [[ -n $before && -n $after ]]; then
    printf -v "${1}_req" '%s' "$((after - before))"
  else
    printf -v "${1}_req" '%s' ""
  fi
}

big_bytes=$((BIG_MB * 1024 * 1024))
small_bytes=$((SMALL * SMALL_SIZE))

# --- inputs ------------------------------------------------------------------
log "scratch dir $work"
log "writing ${BIG_MB} MiB random file and ${SMALL} x ${SMALL_SIZE} B random files..."
mkdir -p "$work/src"
dd if=/dev/urandom of="$work/src/big.bin" bs=1M count="$BIG_MB" iflag=fullblock status=none
python3 - "$work/src/small" "$SMALL" "$SMALL_SIZE" << 'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    sub = os.path.join(d, f"{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:06d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
# The tarball for the extraction baseline (built untimed).
(cd "$work/src" && tar cf "$work/small.tar" small)

# --- servers -------------------------------------------------------------------
# wait_for FILE PID WHAT: waits until FILE has a first line or PID dies.
wait_for() {
  local i
  for i in $(seq 300); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2> /dev/null || break
    sleep 0.1
  done
  echo "bench: $3 did not start; its stderr:" >&2
  sed 's/^/  /' "$work/$3.err" >&2 || true
  exit 1
}

export SATCHEL_ADMIN_TOKEN="bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 > "$work/satchel.out" 2> "$work/satchel-serve.err" &
pids+=($!)
wait_for "$work/satchel.out" "${pids[-1]}" satchel-serve
until grep -q '^listening on ' "$work/satchel.out"; do
  kill -0 "${pids[-1]}" 2> /dev/null || die "satchel serve exited: $(cat "$work/satchel-serve.err")"
  sleep 0.1
done
export SATCHEL_URL=$(sed -n 's/^listening on //p' "$work/satchel.out" | head -1)
export SATCHEL_TOKEN=$SATCHEL_ADMIN_TOKEN
export SATCHEL_PIPELINE=bench SATCHEL_JOB=bench SATCHEL_STEP=bench
unset SATCHEL_ADMIN_TOKEN
log "satchel at $SATCHEL_URL (data dir $work/data)"

# Discard sink for the tar | curl baseline: PUT reads the body (chunked or
# sized) and answers with the byte count. Prints its port first.
cat > "$work/sink.py" << 'PY'
import http.server

class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_PUT(self):
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                left = size
                while left:
                    n = len(self.rfile.read(min(left, 1 << 20)))
                    if n == 0:
                        raise ConnectionError("body ended early")
                    left -= n
                total += size
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                n = len(self.rfile.read(min(left, 1 << 20)))
                if n == 0:
                    raise ConnectionError("body ended early")
                left -= n
                total += n
        body = f"{total}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(srv.server_address[1], flush=True)
srv.serve_forever()
PY
python3 "$work/sink.py" > "$work/sink.out" 2> "$work/sink.err" &
pids+=($!)
wait_for "$work/sink.out" "${pids[-1]}" sink
sink="http://127.0.0.1:$(head -1 "$work/sink.out")"

# --- big file -------------------------------------------------------------------
log "big file: dd write baseline"
timed dd_big dd if="$work/src/big.bin" of="$work/dd.out" bs=4M conv=fdatasync status=none
rm -f "$work/dd.out"

log "big file: satchel upload"
up_big_run() { (cd "$work/src" && SATCHEL_RUN=1 satchel artifact upload --json big.bin > "$work/up_big.json"); }
counted up_big up_big_run
expect "big upload files_sent" "$(json "$work/up_big.json" files_sent)" 1
expect "big upload bytes_sent" "$(json "$work/up_big.json" bytes_sent)" "$big_bytes"

log "big file: satchel download"
mkdir -p "$work/dl_big"
down_big_run() { SATCHEL_RUN=1 satchel artifact download --json big.bin "$work/dl_big" --run 1 > "$work/down_big.json"; }
counted down_big down_big_run
expect "big download files" "$(json "$work/down_big.json" files)" 1
cmp -s "$work/dl_big/big.bin" "$work/src/big.bin" || die "downloaded big.bin differs from the original"
rm -rf "$work/dl_big"

# --- many small files --------------------------------------------------------------
log "small files: tar | curl -T - baseline"
tar_put() {
  (cd "$work/src" && tar cf - small) | curl -sS --fail -T - -H 'Transfer-Encoding: chunked' \
    -o "$work/sink.reply" "$sink/small.tar"
}
timed tar_up tar_put
sunk=$(cat "$work/sink.reply")
((sunk >= small_bytes)) || die "discard sink received only $sunk bytes"

log "small files: satchel upload"
up_small_run() { (cd "$work/src" && SATCHEL_RUN=2 satchel artifact upload --json 'small/**' > "$work/up_small.json"); }
counted up_small up_small_run
expect "small upload files_sent" "$(json "$work/up_small.json" files_sent)" "$SMALL"
expect "small upload bytes_sent" "$(json "$work/up_small.json" bytes_sent)" "$small_bytes"

log "small files: tar xf baseline"
mkdir -p "$work/tarx"
timed tar_down tar xf "$work/small.tar" -C "$work/tarx"
rm -rf "$work/tarx"

log "small files: satchel download"
mkdir -p "$work/dl_small"
down_small_run() { SATCHEL_RUN=2 satchel artifact download --json 'small/**' "$work/dl_small" --run 2 > "$work/down_small.json"; }
counted down_small down_small_run
expect "small download files" "$(json "$work/down_small.json" files)" "$SMALL"
diff -r -q "$work/dl_small/small" "$work/src/small" > /dev/null || die "downloaded small files differ from the originals"

# --- dedup: the unchanged big file into a new run (untimed) ------------------------
log "big file: re-upload into a new run (dedup check)"
(cd "$work/src" && SATCHEL_RUN=3 satchel artifact upload --json big.bin > "$work/up_again.json") ||
  die "re-upload of big.bin failed"
resent=$(json "$work/up_again.json" bytes_sent)

# --- requests: counted by the server's /metrics, else inferred ------------------------
# The inference follows the transfer plan constants in crates/cli/src/transfer.rs.
plan_const() { sed -n "s/^pub const $1: [a-z0-9]* = \(.*\);/\1/p" "$repo/crates/cli/src/transfer.rs" | head -1; }
if [[ -n $up_small_req && -n $down_small_req ]]; then
  requests="upload big $up_big_req, download big $down_big_req; upload small $up_small_req, download small $down_small_req (counted by /metrics)"
elif bf=$(plan_const BATCH_FILES) && bb=$(plan_const BATCH_BYTES) && [[ -n $bf && -n $bb ]]; then
  per=$(((bb) / SMALL_SIZE))
  ((per > bf)) && per=$bf
  batches=$(((SMALL + per - 1) / per))
  requests="small upload $((batches + 2)), download $((batches + 1)) (inferred from the transfer plan: $per files per batch)"
else
  requests="n/a (no /metrics and no transfer plan found)"
fi

# --- report ----------------------------------------------------------------------------
row() { # case bytes satchel_s baseline_name baseline_s
  awk -v c="$1" -v b="$2" -v s="$3" -v bn="$4" -v bs="$5" 'BEGIN {
    printf "%-24s %9.3f %9.1f | %-26s %9.3f %9.1f | %6.2f\n", c, s, b / s / 1e6, bn, bs, b / bs / 1e6, bs / s }'
}
line=$(printf '%*s' 104 '' | tr ' ' -)
echo
echo "Satchel benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "satchel: $bin"
echo "scratch: $work ($(df -P "$work" | awk 'NR == 2 { print $1 }'))"
echo "big: 1 file, $big_bytes bytes (${BIG_MB} MiB); small: $SMALL files x $SMALL_SIZE B = $small_bytes bytes"
echo "ratio = baseline time / satchel time (1.00 = as fast as the baseline, higher is better)"
echo "$line"
printf '%-24s %9s %9s | %-26s %9s %9s | %6s\n' case "satchel s" "MB/s" baseline "s" "MB/s" ratio
echo "$line"
row "upload ${BIG_MB} MiB" "$big_bytes" "$up_big" "dd bs=4M conv=fdatasync" "$dd_big"
row "download ${BIG_MB} MiB" "$big_bytes" "$down_big" "dd bs=4M conv=fdatasync" "$dd_big"
row "upload ${SMALL} x 4 KiB" "$small_bytes" "$up_small" "tar cf - | curl -T - sink" "$tar_up"
row "download ${SMALL} x 4 KiB" "$small_bytes" "$down_small" "tar xf (local tarball)" "$tar_down"
echo "$line"
awk -v n="$SMALL" -v u="$up_small" -v d="$down_small" -v tu="$tar_up" -v td="$tar_down" 'BEGIN {
  printf "small files/s: satchel upload %.0f, download %.0f; tar|curl %.0f, tar xf %.0f\n", n / u, n / d, n / tu, n / td }'
echo "satchel API requests: $requests"
echo "sent: big $(json "$work/up_big.json" files_sent) file / $(json "$work/up_big.json" bytes_sent) B; small $(json "$work/up_small.json" files_sent) files / $(json "$work/up_small.json" bytes_sent) B (all downloads verified against the originals)"
echo "dedup: re-upload of the unchanged ${BIG_MB} MiB file into a new run sent $resent bytes"
