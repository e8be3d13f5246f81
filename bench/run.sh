#!/usr/bin/env bash
# Satchel benchmark: satchel, this machine's own limits and the usual
# alternatives, side by side, in one run, each row against its goal. See
# bench/README.md for what is measured and how to read it.
#
#   BENCH_BIG_MB       size of the big file in MiB                 (default 1024)
#   BENCH_SMALL_FILES  number of 4 KiB files                       (default 10000)
#   BENCH_NGINX        1: nginx WebDAV PUT/GET rows, 0: skip       (default 1)
#   BENCH_GARAGE       1: small files into Garage S3, satchel vs
#                      `aws s3 cp`; runs scripts/services.sh, 0: skip (default 1)
#   BENCH_CONCURRENT   N concurrent big uploads, server peak RSS, 0: skip (default 16)
#   BENCH_CONCURRENT_DISTINCT  distinct files among those N    (default: as many as the disk allows)
#   BENCH_HUGE_MB      a huge file, up and down on a fresh server, its
#                      time and memory against the big file's; 0: skip (default 6144)
#   BENCH_DIR          scratch root, same disk as the data         (default target/bench-tmp)
#   BENCH_VENV         venv with awscli, made on first use         (default target/bench-venv)
#   SATCHEL_BIN        satchel binary                              (default target/release/satchel)
#
# Builds target/release/satchel first unless SATCHEL_BIN is given.
# shellcheck disable=SC2154 # timed, counted and elapsed assign their variables with printf -v
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL=${BENCH_SMALL_FILES:-10000}
SMALL_SIZE=4096
NGINX=${BENCH_NGINX:-1}
GARAGE=${BENCH_GARAGE:-1}
CONC=${BENCH_CONCURRENT:-16}
CONC_DISTINCT=${BENCH_CONCURRENT_DISTINCT:-}
HUGE_MB=${BENCH_HUGE_MB:-6144}
bin=${SATCHEL_BIN:-$repo/target/release/satchel}
root=${BENCH_DIR:-$repo/target/bench-tmp}
venv=${BENCH_VENV:-$repo/target/bench-venv}
# Garage as scripts/services.sh sets it up (credentials come from its env file).
S3_ENDPOINT=http://127.0.0.1:39000
S3_BUCKET=satchel-test
S3_REGION=garage
# The dedup case changes 1% of the big file, in this many places.
PATCH_PLACES=100

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

[[ $BIG_MB =~ ^[1-9][0-9]*$ ]] || die "BENCH_BIG_MB must be a positive integer, got '$BIG_MB'"
[[ $SMALL =~ ^[1-9][0-9]*$ ]] || die "BENCH_SMALL_FILES must be a positive integer, got '$SMALL'"
[[ $NGINX =~ ^[01]$ ]] || die "BENCH_NGINX must be 0 or 1, got '$NGINX'"
[[ $GARAGE =~ ^[01]$ ]] || die "BENCH_GARAGE must be 0 or 1, got '$GARAGE'"
[[ $CONC =~ ^[0-9]+$ ]] || die "BENCH_CONCURRENT must be a number (0 skips), got '$CONC'"
[[ $HUGE_MB =~ ^[0-9]+$ ]] || die "BENCH_HUGE_MB must be a number (0 skips), got '$HUGE_MB'"
[[ -z $CONC_DISTINCT || $CONC_DISTINCT =~ ^[1-9][0-9]*$ ]] ||
  die "BENCH_CONCURRENT_DISTINCT must be a positive integer, got '$CONC_DISTINCT'"
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
# The servers measured here use the defaults: content on the local disk (or
# the S3 store given below), default compression, no encryption.
unset SATCHEL_STORE SATCHEL_KEYS SATCHEL_KEYS_FILE SATCHEL_COMPRESSION

mkdir -p "$root"
work=$(mktemp -d "$root/run.XXXXXX")
pids=()
s3_prefixes=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  # What this run put into Garage (its own random prefixes).
  ((${#s3_prefixes[@]} == 0)) || log "removing this run's objects from Garage (s3://$S3_BUCKET, prefixes ${s3_prefixes[*]})..."
  for p in "${s3_prefixes[@]}"; do
    "$aws" s3 rm --recursive --only-show-errors --endpoint-url "$S3_ENDPOINT" "s3://$S3_BUCKET/$p/" \
      > /dev/null 2>&1 || log "warning: could not remove s3://$S3_BUCKET/$p/ from Garage"
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# elapsed VAR T0 T1: stores T1 - T0 (seconds) in VAR.
elapsed() { printf -v "$1" '%s' "$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.6f", b - a }')"; }
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
  elapsed "$var" "$t0" "$t1"
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
# api_requests: the /api/v1 request counter from /metrics of the server at
# $metrics_url (default $SATCHEL_URL), or empty when this build has no /metrics.
metrics_url=
metric() { curl -sf "${metrics_url:-$SATCHEL_URL}/metrics" 2> /dev/null | awk -v m="$1" '$1 == m { printf "%.0f\n", $2 }'; }
api_requests() { metric satchel_api_requests_total; }
# counted VAR CMD...: `timed VAR CMD...`, the API requests CMD made in VAR_req
# and the request body bytes the server received in VAR_in (all requests:
# payload, chunk lists, manifests).
counted() {
  local before after in_before in_after
  before=$(api_requests)
  in_before=$(metric satchel_http_received_bytes_total)
  timed "$@"
  after=$(api_requests)
  in_after=$(metric satchel_http_received_bytes_total)
  if [[ -n $before && -n $after ]]; then
    printf -v "${1}_req" '%s' "$((after - before))"
  else
    printf -v "${1}_req" '%s' ""
  fi
  if [[ -n $in_before && -n $in_after ]]; then
    printf -v "${1}_in" '%s' "$((in_after - in_before))"
  else
    printf -v "${1}_in" '%s' ""
  fi
}
# random_file PATH MIB: incompressible, never-repeating content (an AES-CTR
# keystream under a fresh random key; /dev/urandom without openssl).
random_file() {
  local key iv
  if command -v openssl > /dev/null; then
    key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    iv=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    dd if=/dev/zero bs=1M count="$2" status=none | openssl enc -aes-128-ctr -K "$key" -iv "$iv" -out "$1"
  else
    dd if=/dev/urandom of="$1" bs=1M count="$2" iflag=fullblock status=none
  fi
}
free_mib() { df -Pm "$1" | awk 'NR == 2 { print $4 }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# proc_kib PID FIELD: a field of /proc/PID/status in KiB (VmHWM = peak RSS).
proc_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

big_bytes=$((BIG_MB * 1024 * 1024))
small_bytes=$((SMALL * SMALL_SIZE))

# --- prerequisites -------------------------------------------------------------
log "scratch dir $work"
if ((NGINX)); then
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  if ! [[ -x $nginx_bin ]]; then
    if ((EUID == 0)) && command -v apt-get > /dev/null; then
      log "installing nginx-light from Debian packages (apt-get)..."
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; } \
        > "$work/apt.log" 2>&1 || { sed 's/^/  /' "$work/apt.log" >&2; die "could not install nginx-light"; }
      nginx_bin=/usr/sbin/nginx
    else
      die "BENCH_NGINX=1 needs nginx (apt-get install nginx-light); or set BENCH_NGINX=0"
    fi
  fi
fi

if ((GARAGE)); then
  # scripts/services.sh reuses what runs already; a second copy of it running
  # at the same time would start a second Garage install, so wait for any other.
  self=" $$ "
  p=$$
  while ((p > 1)); do
    p=$(ps -o ppid= -p "$p" | tr -d ' ')
    self+="$p "
  done
  other_services() {
    local q
    for q in $(pgrep -f 'scripts/services\.sh' || true); do
      [[ $self == *" $q "* ]] || return 0
    done
    return 1
  }
  if other_services; then
    log "waiting for another scripts/services.sh to finish (it may be installing Garage, ~11 minutes)..."
    for i in $(seq 360); do
      other_services || break
      ((i < 360)) || die "another scripts/services.sh still runs after 30 minutes; try again later or set BENCH_GARAGE=0"
      sleep 5
    done
  fi
  log "storage services: bash scripts/services.sh (installs Garage on first use, ~11 minutes)..."
  bash "$repo/scripts/services.sh" > "$work/services.log" 2>&1 ||
    { sed 's/^/  /' "$work/services.log" >&2; die "scripts/services.sh failed; or set BENCH_GARAGE=0"; }
  services_env=${SATCHEL_SERVICES_DIR:-/tmp/satchel-test-services}/env
  [[ -f $services_env ]] || die "scripts/services.sh wrote no $services_env"
  # shellcheck source=/dev/null
  source "$services_env"
  aws=$venv/bin/aws
  if ! "$aws" --version > /dev/null 2>&1; then
    log "installing awscli into $venv (pip)..."
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q awscli; } > "$work/pip.log" 2>&1 ||
      { sed 's/^/  /' "$work/pip.log" >&2; die "could not install awscli into $venv"; }
  fi
  # Only the test key from the services env; no profile, config or instance metadata.
  unset AWS_PROFILE AWS_SESSION_TOKEN
  export AWS_DEFAULT_REGION=$S3_REGION AWS_EC2_METADATA_DISABLED=true
  export AWS_CONFIG_FILE=$work/aws.config AWS_SHARED_CREDENTIALS_FILE=$work/aws.credentials
  s3_tag=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
  "$aws" s3 ls --endpoint-url "$S3_ENDPOINT" "s3://$S3_BUCKET/" > /dev/null 2> "$work/aws.err" ||
    { sed 's/^/  /' "$work/aws.err" >&2; die "aws cannot list s3://$S3_BUCKET at $S3_ENDPOINT"; }
fi

# Disk: the inputs, satchel's copy, one download or nginx copy at a time, the
# changed copy for the dedup case; then the concurrent case's inputs (DISTINCT
# files, hard-linked up to N) and what the server writes for N uploads.
free=$(free_mib "$work")
need=$((4 * BIG_MB + small_bytes * 8 / 1048576 + 512))
((free >= need)) || die "needs about $need MiB free under $root, has $free MiB (smaller BENCH_BIG_MB?)"
if ((CONC > 0)); then
  fit=$(((free - need - CONC * BIG_MB) / BIG_MB))
  if [[ -n $CONC_DISTINCT ]]; then
    distinct=$((CONC_DISTINCT < CONC ? CONC_DISTINCT : CONC))
    ((distinct <= fit)) || die "BENCH_CONCURRENT=$CONC with $distinct distinct files needs about $((need + (CONC + distinct) * BIG_MB)) MiB free, has $free MiB"
  else
    ((fit >= 1)) || die "BENCH_CONCURRENT=$CONC needs at least $((need + (CONC + 1) * BIG_MB)) MiB free, has $free MiB; set BENCH_CONCURRENT=0 or smaller"
    distinct=$((fit < CONC ? fit : CONC))
  fi
  ((distinct == CONC)) || log "concurrent case: $distinct distinct files for $CONC uploads (disk space)"
fi
# The huge case runs last, once the concurrent case's files are gone: the
# huge file, its stored copy and its download at once, beside the inputs
# and the main server's data (about 3x the big file).
if ((HUGE_MB > 0)); then
  [[ -x /usr/bin/time ]] || die "the huge-file case needs GNU time (apt-get install time); BENCH_HUGE_MB=0 skips it"
  huge_need=$((3 * HUGE_MB + 3 * BIG_MB + small_bytes * 8 / 1048576 + 512))
  ((free >= huge_need)) || die "the huge-file case needs about $huge_need MiB free under $root, has $free MiB (BENCH_HUGE_MB=0 skips it)"
fi

# --- inputs ------------------------------------------------------------------
log "writing ${BIG_MB} MiB random file and ${SMALL} x ${SMALL_SIZE} B random files..."
mkdir -p "$work/src"
random_file "$work/src/big.bin" "$BIG_MB"
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

token="bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# start_satchel NAME ARGS...: `satchel serve ARGS` on 127.0.0.1:0, output in
# $work/NAME.{out,err}; sets started_url and started_pid (the server itself).
start_satchel() {
  local name=$1
  shift
  SATCHEL_ADMIN_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 "$@" > "$work/$name.out" 2> "$work/$name.err" &
  started_pid=$!
  pids+=("$started_pid")
  wait_for "$work/$name.out" "$started_pid" "$name"
  until grep -q '^listening on ' "$work/$name.out"; do
    kill -0 "$started_pid" 2> /dev/null || die "$name exited: $(cat "$work/$name.err")"
    sleep 0.1
  done
  started_url=$(sed -n 's/^listening on //p' "$work/$name.out" | head -1)
}
start_satchel satchel-serve --data-dir "$work/data"
main_pid=$started_pid
export SATCHEL_URL=$started_url
export SATCHEL_TOKEN=$token
export SATCHEL_PIPELINE=bench SATCHEL_JOB=bench SATCHEL_STEP=bench
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

# A private nginx WebDAV server: files under $work/nginx/root, request bodies
# buffered in $work/nginx/tmp (same disk), then renamed into place.
if ((NGINX)); then
  n=$work/nginx
  mkdir -p "$n/root" "$n/tmp" "$n/logs"
  nginx_port=$(free_port)
  {
    ((EUID == 0)) && echo "user root;"
    cat << EOF
worker_processes 1;
pid $n/nginx.pid;
error_log $n/logs/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $n/tmp/body;
  proxy_temp_path $n/tmp/proxy;
  fastcgi_temp_path $n/tmp/fastcgi;
  uwsgi_temp_path $n/tmp/uwsgi;
  scgi_temp_path $n/tmp/scgi;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:$nginx_port;
    root $n/root;
    location / {
      dav_methods PUT DELETE MKCOL COPY MOVE;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
  }
}
EOF
  } > "$n/nginx.conf"
  "$nginx_bin" -e "$n/logs/error.log" -p "$n" -c "$n/nginx.conf" -g 'daemon off;' > /dev/null 2> "$work/nginx.err" &
  pids+=($!)
  nginx="http://127.0.0.1:$nginx_port"
  for i in $(seq 300); do
    curl -s -o /dev/null "$nginx/" && break
    if ! kill -0 "${pids[-1]}" 2> /dev/null || ((i == 300)); then
      echo "bench: nginx did not start; its stderr and error log:" >&2
      sed 's/^/  /' "$work/nginx.err" "$n/logs/error.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "nginx WebDAV at $nginx (root $n/root)"
fi

# --- big file -------------------------------------------------------------------
log "big file: dd write baseline"
timed dd_big dd if="$work/src/big.bin" of="$work/dd.out" bs=4M conv=fdatasync status=none
rm -f "$work/dd.out"

log "big file: satchel upload"
up_big_run() { (cd "$work/src" && SATCHEL_RUN=1 satchel artifact upload --json big.bin > "$work/up_big.json"); }
counted up_big up_big_run
expect "big upload files_sent" "$(json "$work/up_big.json" files_sent)" 1
expect "big upload bytes_sent" "$(json "$work/up_big.json" bytes_sent)" "$big_bytes"
# Objects the store holds for the big file alone (the data dir was empty).
big_objects=$(find "$work/data/content/objects" -type f | wc -l)

if ((NGINX)); then
  log "big file: nginx WebDAV PUT (curl -T)"
  nginx_put() { curl -sS --fail -T "$work/src/big.bin" -o /dev/null "$nginx/big.bin"; }
  timed put_nginx nginx_put
  # nginx does not fsync: what it left in the page cache, flushed right after.
  t0=$(now)
  sync
  elapsed put_nginx_flush "$t0" "$(now)"
  cmp -s "$n/root/big.bin" "$work/src/big.bin" || die "nginx stored a big.bin that differs from the original"
fi

log "big file: satchel download"
mkdir -p "$work/dl_big"
down_big_run() { SATCHEL_RUN=1 satchel artifact download --json big.bin "$work/dl_big" --run 1 > "$work/down_big.json"; }
counted down_big down_big_run
expect "big download files" "$(json "$work/down_big.json" files)" 1
cmp -s "$work/dl_big/big.bin" "$work/src/big.bin" || die "downloaded big.bin differs from the original"
rm -rf "$work/dl_big"

if ((NGINX)); then
  log "big file: nginx GET (curl -o)"
  mkdir -p "$work/dl_nginx"
  nginx_get() { curl -sS --fail -o "$work/dl_nginx/big.bin" "$nginx/big.bin"; }
  timed get_nginx nginx_get
  cmp -s "$work/dl_nginx/big.bin" "$work/src/big.bin" || die "big.bin from nginx differs from the original"
  rm -rf "$work/dl_nginx" "$n/root/big.bin"
fi

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
rm -rf "$work/dl_small"

# --- dedup: the big file again, unchanged and changed in places -----------------------
log "dedup: unchanged big file into a new run"
up_again_run() { (cd "$work/src" && SATCHEL_RUN=3 satchel artifact upload --json big.bin > "$work/up_again.json"); }
counted up_again up_again_run
resent=$(json "$work/up_again.json" bytes_sent)

log "dedup: big file with 1% changed in $PATCH_PLACES places, into a new run"
mkdir -p "$work/src-mod"
cp "$work/src/big.bin" "$work/src-mod/big.bin"
# One patch of (1% of the size) / PLACES random bytes at a random offset in
# each of PLACES equal slices of the file: scattered, never overlapping.
patched=$(python3 - "$work/src-mod/big.bin" "$PATCH_PLACES" << 'PY'
import os, random, sys
path, places = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
patch = size // 100 // places
slot = size // places
total = 0
with open(path, "r+b") as f:
    for i in range(places):
        f.seek(i * slot + random.randrange(slot - patch + 1))
        f.write(os.urandom(patch))
        total += patch
print(total)
PY
)
up_mod_run() { (cd "$work/src-mod" && SATCHEL_RUN=4 satchel artifact upload --json big.bin > "$work/up_mod.json"); }
counted up_mod up_mod_run
expect "changed big upload files_sent" "$(json "$work/up_mod.json" files_sent)" 1
mod_sent=$(json "$work/up_mod.json" bytes_sent)
mkdir -p "$work/dl_mod"
SATCHEL_RUN=4 satchel artifact download big.bin "$work/dl_mod" --run 4 > /dev/null ||
  die "download of the changed big.bin failed"
cmp -s "$work/dl_mod/big.bin" "$work/src-mod/big.bin" || die "downloaded changed big.bin differs from its original"
rm -rf "$work/dl_mod" "$work/src-mod"

# --- small files into Garage S3: satchel (S3 store) vs aws s3 cp ----------------------
if ((GARAGE)); then
  s3_sat=bench-$s3_tag
  s3_aws=aws-$s3_tag
  s3_prefixes=("$s3_sat" "$s3_aws")
  start_satchel satchel-s3 --data-dir "$work/data-s3" \
    --store "s3://$S3_BUCKET/$s3_sat?endpoint=$S3_ENDPOINT&region=$S3_REGION&allow_http=true"
  s3_url=$started_url
  log "satchel with store s3://$S3_BUCKET/$s3_sat/ at $s3_url"

  log "small files to S3: aws s3 cp --recursive baseline"
  aws_cp() {
    "$aws" s3 cp --recursive --only-show-errors --endpoint-url "$S3_ENDPOINT" \
      "$work/src/small/" "s3://$S3_BUCKET/$s3_aws/" > "$work/aws.err" 2>&1 ||
      { sed 's/^/  /' "$work/aws.err" >&2; return 1; }
  }
  timed aws_up aws_cp

  log "small files to S3: satchel upload"
  up_s3_run() { (cd "$work/src" && SATCHEL_URL=$s3_url SATCHEL_RUN=5 satchel artifact upload --json 'small/**' > "$work/up_s3.json"); }
  metrics_url=$s3_url
  counted up_s3 up_s3_run
  metrics_url=
  expect "S3 small upload files_sent" "$(json "$work/up_s3.json" files_sent)" "$SMALL"
  expect "S3 small upload bytes_sent" "$(json "$work/up_s3.json" bytes_sent)" "$small_bytes"

  s3_objects() { "$aws" s3 ls --recursive --endpoint-url "$S3_ENDPOINT" "s3://$S3_BUCKET/$1/" | wc -l; }
  objects_sat=$(s3_objects "$s3_sat") || die "cannot list s3://$S3_BUCKET/$s3_sat/"
  objects_aws=$(s3_objects "$s3_aws") || die "cannot list s3://$S3_BUCKET/$s3_aws/"
  expect "objects written by aws s3 cp" "$objects_aws" "$SMALL"

  log "big file to S3: aws s3 cp (multipart) baseline"
  aws_big() {
    "$aws" s3 cp --only-show-errors --endpoint-url "$S3_ENDPOINT" \
      "$work/src/big.bin" "s3://$S3_BUCKET/$s3_aws/big.bin" > "$work/aws.err" 2>&1 ||
      { sed 's/^/  /' "$work/aws.err" >&2; return 1; }
  }
  timed aws_big_up aws_big

  log "big file to S3: satchel upload"
  objects_before_big=$(s3_objects "$s3_sat") || die "cannot list s3://$S3_BUCKET/$s3_sat/"
  up_s3_big_run() { (cd "$work/src" && SATCHEL_URL=$s3_url SATCHEL_RUN=6 satchel artifact upload --json big.bin > "$work/up_s3_big.json"); }
  timed up_s3_big up_s3_big_run
  expect "S3 big upload bytes_sent" "$(json "$work/up_s3_big.json" bytes_sent)" "$big_bytes"
  objects_big_s3=$(($(s3_objects "$s3_sat") - objects_before_big))
fi

# --- concurrent big uploads: the server's peak memory -----------------------------------
if ((CONC > 0)); then
  log "concurrent: writing $distinct distinct ${BIG_MB} MiB files for $CONC uploads..."
  for i in $(seq "$CONC"); do
    mkdir -p "$work/conc/$i"
    if ((i <= distinct)); then
      random_file "$work/conc/$i/big.bin" "$BIG_MB"
    else
      ln "$work/conc/$(((i - 1) % distinct + 1))/big.bin" "$work/conc/$i/big.bin"
    fi
  done
  # A server of its own, so its peak RSS is this case's.
  start_satchel satchel-conc --data-dir "$work/data-conc"
  conc_url=$started_url
  conc_pid=$started_pid
  conc_base_kib=$(proc_kib "$conc_pid" VmRSS)
  log "concurrent: $CONC uploads at once to $conc_url"
  conc_run() {
    local i rc=0
    local -a clients=()
    for i in $(seq "$CONC"); do
      (cd "$work/conc/$i" && SATCHEL_URL=$conc_url SATCHEL_RUN=$((100 + i)) \
        "$bin" artifact upload --json big.bin > "$work/conc/$i.json" 2> "$work/conc/$i.err") &
      clients+=($!)
    done
    for i in "${!clients[@]}"; do
      if ! wait "${clients[$i]}"; then
        rc=1
        echo "bench: concurrent upload $((i + 1)) failed:" >&2
        sed 's/^/  /' "$work/conc/$((i + 1)).err" >&2
      fi
    done
    return "$rc"
  }
  metrics_url=$conc_url
  counted conc_up conc_run
  metrics_url=
  conc_hwm_kib=$(proc_kib "$conc_pid" VmHWM)
  conc_sent=0
  for i in $(seq "$CONC"); do
    expect "concurrent upload $i files" "$(json "$work/conc/$i.json" files)" 1
    conc_sent=$((conc_sent + $(json "$work/conc/$i.json" bytes_sent)))
  done
  ((distinct < CONC || conc_sent == CONC * big_bytes)) ||
    die "concurrent uploads sent $conc_sent bytes, expected $((CONC * big_bytes))"
  # One of them back, untimed.
  mkdir -p "$work/dl_conc"
  SATCHEL_URL=$conc_url SATCHEL_RUN=$((100 + CONC)) satchel artifact download big.bin "$work/dl_conc" --run $((100 + CONC)) > /dev/null ||
    die "download of a concurrent upload failed"
  cmp -s "$work/dl_conc/big.bin" "$work/conc/$CONC/big.bin" || die "a concurrent upload downloads different from its original"
  rm -rf "$work/dl_conc"
fi
main_hwm_kib=$(proc_kib "$main_pid" VmHWM)

# --- a huge file: time and memory against the big file's -----------------------------
# one_size NAME DIR FILE: FILE (in DIR) up and down through a fresh server of
# its own. Sets NAME_up and NAME_down (seconds), NAME_srv (the server's peak
# RSS, KiB) and NAME_agent_up / NAME_agent_down (the agent's, KiB).
one_size() {
  local name=$1 dir=$2 file=$3 pid url
  start_satchel "satchel-$name" --data-dir "$work/data-$name"
  pid=$started_pid
  url=$started_url
  one_up() {
    (cd "$dir" && SATCHEL_URL=$url SATCHEL_RUN=200 /usr/bin/time -f %M -o "$work/$name.up.rss" \
      "$bin" artifact upload --json "$file" > "$work/$name.up.json" 2> "$work/$name.up.err") ||
      { sed 's/^/  /' "$work/$name.up.err" >&2; return 1; }
  }
  one_down() {
    SATCHEL_URL=$url SATCHEL_RUN=200 /usr/bin/time -f %M -o "$work/$name.down.rss" \
      "$bin" artifact download --json "$file" "$work/dl_$name" --run 200 > /dev/null 2> "$work/$name.down.err" ||
      { sed 's/^/  /' "$work/$name.down.err" >&2; return 1; }
  }
  timed "${name}_up" one_up
  mkdir -p "$work/dl_$name"
  timed "${name}_down" one_down
  cmp -s "$work/dl_$name/$file" "$dir/$file" || die "$file downloaded from a fresh server differs from the original"
  rm -rf "$work/dl_$name"
  local srv agent_up agent_down
  srv=$(proc_kib "$pid" VmHWM)
  agent_up=$(tail -1 "$work/$name.up.rss")
  agent_down=$(tail -1 "$work/$name.down.rss")
  [[ $srv =~ ^[0-9]+$ && $agent_up =~ ^[0-9]+$ && $agent_down =~ ^[0-9]+$ ]] ||
    die "$name: no peak RSS (server '$srv', agent '$agent_up', '$agent_down'): did the server die?"
  printf -v "${name}_srv" '%s' "$srv"
  printf -v "${name}_agent_up" '%s' "$agent_up"
  printf -v "${name}_agent_down" '%s' "$agent_down"
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  rm -rf "$work/data-$name"
}
if ((HUGE_MB > 0)); then
  if ((CONC > 0)); then
    kill "$conc_pid" 2> /dev/null || true
    wait "$conc_pid" 2> /dev/null || true
    rm -rf "$work/conc" "$work/data-conc"
  fi
  log "huge file: writing ${HUGE_MB} MiB random file..."
  mkdir -p "$work/huge"
  random_file "$work/huge/huge.bin" "$HUGE_MB"
  huge_bytes=$(stat -c %s "$work/huge/huge.bin")
  log "huge file: dd write baseline"
  timed dd_huge dd if="$work/huge/huge.bin" of="$work/dd.out" bs=4M conv=fdatasync status=none
  rm -f "$work/dd.out"
  log "huge file: the big file up and down through a fresh server"
  one_size ref "$work/src" big.bin
  log "huge file: the huge file up and down through a fresh server"
  one_size huge "$work/huge" huge.bin
  rm -rf "$work/huge"
fi

# --- requests: counted by the server's /metrics, else inferred ------------------------
# The inference follows the transfer plan constants in crates/cli/src/transfer.rs.
plan_const() { sed -n "s/^pub const $1: [a-z0-9]* = \(.*\);/\1/p" "$repo/crates/cli/src/transfer.rs" | head -1; }
if [[ -n $up_small_req && -n $down_small_req ]]; then
  requests="upload big $up_big_req, download big $down_big_req; upload small $up_small_req, download small $down_small_req; big again $up_again_req, big changed $up_mod_req"
  ((GARAGE)) && requests+="; small to S3 store $up_s3_req"
  ((CONC > 0)) && requests+="; $CONC concurrent big $conc_up_req"
  requests+=" (counted by /metrics)"
elif bf=$(plan_const BATCH_FILES) && bb=$(plan_const BATCH_BYTES) && [[ -n $bf && -n $bb ]]; then
  per=$(((bb) / SMALL_SIZE))
  ((per > bf)) && per=$bf
  batches=$(((SMALL + per - 1) / per))
  requests="small upload $((batches + 2)), download $((batches + 1)) (inferred from the transfer plan: $per files per batch)"
else
  requests="n/a (no /metrics and no transfer plan found)"
fi

# --- report ----------------------------------------------------------------------------
goals=0
met=0
# tally LINE: counts a row's verdict.
tally() {
  case $1 in
    *"NOT MET") goals=$((goals + 1)) ;;
    *" met") goals=$((goals + 1)) met=$((met + 1)) ;;
  esac
}
row() { # case bytes satchel_s baseline_name baseline_s [min_ratio]
  local out
  out=$(awk -v c="$1" -v b="$2" -v s="$3" -v bn="$4" -v bs="$5" -v g="${6:-}" 'BEGIN {
    r = bs / s; goal = "-"; res = ""
    if (g != "") { goal = sprintf(">= %.2f", g); res = (r >= g) ? "met" : "NOT MET" }
    printf "%-28s %9.3f %9.1f | %-28s %9.3f %9.1f | %6.2f %-8s %s\n", c, s, b / s / 1e6, bn, bs, b / bs / 1e6, r, goal, res }')
  echo "$out"
  tally "$out"
}
skipped() { printf '%-28s %19s | %-28s %19s | %6s %s\n' "$1" "" "$2" "" "" "skipped ($3)"; }
check() { # what measured goal met(1/0)
  local out
  out=$(printf '%-50s %-32s %-12s %s' "$1" "$2" "$3" "$([[ $4 == 1 ]] && echo met || echo 'NOT MET')")
  echo "$out"
  tally "$out"
}
# le A B: 1 when A <= B (numbers), else 0.
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? 1 : 0 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f%%", 100 * a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

line=$(printf '%*s' 126 '' | tr ' ' -)
echo
echo "Satchel benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "satchel: $bin"
echo "scratch: $work ($(df -P "$work" | awk 'NR == 2 { print $1 }'))"
echo "big: 1 file, $big_bytes bytes (${BIG_MB} MiB); small: $SMALL files x $SMALL_SIZE B = $small_bytes bytes"
echo "ratio = baseline time / satchel time (1.00 = as fast as the baseline, higher is better)"
echo "$line"
printf '%-28s %9s %9s | %-28s %9s %9s | %6s %-8s %s\n' case "satchel s" "MB/s" baseline "s" "MB/s" ratio goal result
echo "$line"
row "upload ${BIG_MB} MiB" "$big_bytes" "$up_big" "dd bs=4M conv=fdatasync" "$dd_big" 0.9
if ((NGINX)); then
  row "upload ${BIG_MB} MiB" "$big_bytes" "$up_big" "nginx WebDAV PUT (curl -T)" "$put_nginx" 1.5
  row "upload ${BIG_MB} MiB" "$big_bytes" "$up_big" "nginx PUT, then sync" \
    "$(awk -v p="$put_nginx" -v f="$put_nginx_flush" 'BEGIN { printf "%.6f", p + f }')" 1.0
else
  skipped "upload ${BIG_MB} MiB" "nginx WebDAV PUT (curl -T)" "BENCH_NGINX=0"
fi
row "download ${BIG_MB} MiB" "$big_bytes" "$down_big" "dd bs=4M conv=fdatasync" "$dd_big"
if ((NGINX)); then
  row "download ${BIG_MB} MiB" "$big_bytes" "$down_big" "nginx GET (curl -o)" "$get_nginx" 0.9
else
  skipped "download ${BIG_MB} MiB" "nginx GET (curl -o)" "BENCH_NGINX=0"
fi
row "upload ${SMALL} x 4 KiB" "$small_bytes" "$up_small" "tar cf - | curl -T - sink" "$tar_up" 0.666667
row "download ${SMALL} x 4 KiB" "$small_bytes" "$down_small" "tar xf (local tarball)" "$tar_down" 0.5
if ((GARAGE)); then
  row "upload ${SMALL} x 4 KiB to S3" "$small_bytes" "$up_s3" "aws s3 cp --recursive" "$aws_up" 2
  row "upload ${BIG_MB} MiB to S3" "$big_bytes" "$up_s3_big" "aws s3 cp (multipart)" "$aws_big_up" 1
else
  skipped "upload ${SMALL} x 4 KiB to S3" "aws s3 cp --recursive" "BENCH_GARAGE=0"
  skipped "upload ${BIG_MB} MiB to S3" "aws s3 cp (multipart)" "BENCH_GARAGE=0"
fi
if ((HUGE_MB > 0)); then
  row "upload ${HUGE_MB} MiB, fresh server" "$huge_bytes" "$huge_up" "dd bs=4M conv=fdatasync" "$dd_huge"
  row "download ${HUGE_MB} MiB, fresh server" "$huge_bytes" "$huge_down" "dd bs=4M conv=fdatasync" "$dd_huge"
else
  skipped "upload ${HUGE_MB} MiB" "dd bs=4M conv=fdatasync" "BENCH_HUGE_MB=0"
fi
echo "$line"
printf '%-50s %-32s %-12s %s\n' check measured goal result
echo "$line"
check "dedup: ${BIG_MB} MiB unchanged, into a new run" "bytes_sent $resent ($(pct "$resent" "$big_bytes"))" "<= 0.5%" \
  "$(le "$resent" "$(awk -v b="$big_bytes" 'BEGIN { print b * 0.005 }')")"
check "dedup: ${BIG_MB} MiB, 1% changed in $PATCH_PLACES places" "bytes_sent $mod_sent ($(pct "$mod_sent" "$big_bytes"))" "<= 3%" \
  "$(le "$mod_sent" "$(awk -v b="$big_bytes" 'BEGIN { print b * 0.03 }')")"
if [[ -n $up_mod_in ]]; then
  check "dedup: 1% changed, on the wire (request bodies)" "$up_mod_in B ($(pct "$up_mod_in" "$big_bytes"))" "<= 3%" \
    "$(le "$up_mod_in" "$(awk -v b="$big_bytes" 'BEGIN { print b * 0.03 }')")"
  check "dedup: 1% changed, wire bytes beyond the payload" "$((up_mod_in - mod_sent)) B ($(pct "$((up_mod_in - mod_sent))" "$big_bytes"))" "<= 0.3%" \
    "$(le "$((up_mod_in - mod_sent))" "$(awk -v b="$big_bytes" 'BEGIN { print b * 0.003 }')")"
fi
check "stored objects per GiB (the big file, local disk)" "$big_objects objects for ${BIG_MB} MiB" "<= 64" \
  "$(awk -v o="$big_objects" -v m="$BIG_MB" 'BEGIN { print (o * 1024 / m <= 64) ? 1 : 0 }')"
if ((GARAGE)); then
  check "stored objects per GiB (the big file, Garage)" "$objects_big_s3 objects for ${BIG_MB} MiB" "<= 64" \
    "$(awk -v o="$objects_big_s3" -v m="$BIG_MB" 'BEGIN { print (o * 1024 / m <= 64) ? 1 : 0 }')"
fi
if ((CONC > 0)); then
  check "server peak RSS, $CONC concurrent ${BIG_MB} MiB uploads" "VmHWM $(mib "$conc_hwm_kib")" "<= 96 MiB" \
    "$(awk -v k="$conc_hwm_kib" 'BEGIN { print (k <= 96 * 1024) ? 1 : 0 }')"
else
  printf '%-50s %-32s %-12s %s\n' "server peak RSS, concurrent uploads" "" "<= 96 MiB" "skipped (BENCH_CONCURRENT=0)"
fi
if ((HUGE_MB > 0)); then
  # flat A B: 1 when A <= 1.25 B.
  flat() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= 1.25 * b) ? 1 : 0 }'; }
  check "server peak RSS, ${HUGE_MB} vs ${BIG_MB} MiB, up+down" "$(mib "$huge_srv") vs $(mib "$ref_srv")" "<= 1.25 x" \
    "$(flat "$huge_srv" "$ref_srv")"
  check "agent peak RSS, upload, ${HUGE_MB} vs ${BIG_MB} MiB" "$(mib "$huge_agent_up") vs $(mib "$ref_agent_up")" "<= 1.25 x" \
    "$(flat "$huge_agent_up" "$ref_agent_up")"
  check "agent peak RSS, download, ${HUGE_MB} vs ${BIG_MB} MiB" "$(mib "$huge_agent_down") vs $(mib "$ref_agent_down")" "<= 1.25 x" \
    "$(flat "$huge_agent_down" "$ref_agent_down")"
fi
echo "$line"
echo "goals met: $met of $goals"
awk -v n="$SMALL" -v u="$up_small" -v d="$down_small" -v tu="$tar_up" -v td="$tar_down" 'BEGIN {
  printf "small files/s: satchel upload %.0f, download %.0f; tar|curl %.0f, tar xf %.0f\n", n / u, n / d, n / tu, n / td }'
echo "satchel API requests: $requests"
echo "sent: big $(json "$work/up_big.json" files_sent) file / $(json "$work/up_big.json" bytes_sent) B; small $(json "$work/up_small.json" files_sent) files / $(json "$work/up_small.json" bytes_sent) B (all downloads verified against the originals)"
awk -v p="$patched" -v b="$big_bytes" -v n="$PATCH_PLACES" -v s="$mod_sent" -v t="$up_mod" 'BEGIN {
  printf "dedup, changed file: %d B changed (%.2f%%) in %d places of %d B; sent %d B = %.1f x the changed bytes; upload took %.3f s\n", p, 100 * p / b, n, p / n, s, s / p, t }'
if ((NGINX)); then
  awk -v f="$put_nginx_flush" -v p="$put_nginx" -v s="$up_big" 'BEGIN {
    printf "nginx PUT does not fsync: the sync right after it took %.3f s (PUT + sync %.3f s, ratio %.2f)\n", f, p + f, (p + f) / s }'
fi
if ((GARAGE)); then
  echo "S3 (Garage, s3://$S3_BUCKET): satchel store s3://$S3_BUCKET/$s3_sat/ holds $objects_sat objects; aws s3 cp wrote $objects_aws objects to s3://$S3_BUCKET/$s3_aws/; both removed on exit"
fi
if ((CONC > 0)); then
  awk -v n="$CONC" -v d="$distinct" -v b="$big_bytes" -v t="$conc_up" -v sent="$conc_sent" -v h="$conc_hwm_kib" -v r="$conc_base_kib" 'BEGIN {
    printf "concurrent: %d uploads of %d B (%d distinct files) in %.3f s, %.1f MB/s in all, %.0f B sent; server RSS %.1f MiB idle, peak %.1f MiB\n", n, b, d, t, n * b / t / 1e6, sent, r / 1024, h / 1024 }'
fi
echo "peak RSS of the main satchel server over the sequential cases: $(mib "$main_hwm_kib")"
if ((HUGE_MB > 0)); then
  awk -v hb="$huge_bytes" -v bb="$big_bytes" -v hu="$huge_up" -v hd="$huge_down" -v ru="$ref_up" -v rd="$ref_down" 'BEGIN {
    printf "huge file, fresh servers: upload %.1f MB/s (big file %.1f), download %.1f MB/s (big file %.1f)\n", hb / hu / 1e6, bb / ru / 1e6, hb / hd / 1e6, bb / rd / 1e6 }'
fi
