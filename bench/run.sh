#!/usr/bin/env bash
# Satchel benchmark, side by side with this machine's limits in one run.
#   1 GiB file:      upload vs `dd conv=fdatasync` (durable write to the same
#                    disk); download vs a plain `dd` copy (page cache, no sync).
#   10,000 x 4 KiB:  upload vs `tar cf - | curl -T -` into a loopback discard
#                    sink; download vs `curl | tar xf -` from a loopback server.
# Ratios are baseline_time / satchel_time: above 1 means satchel was faster.
# Sizes: BENCH_BIG_MB (default 1024), BENCH_SMALL_FILES (default 10000).
# Scratch space: BENCH_DIR (default target/bench-tmp, same disk as the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL=${BENCH_SMALL_FILES:-10000}
root=${BENCH_DIR:-$PWD/target/bench-tmp}

echo "building release binary..." >&2
cargo build --release --locked --quiet -p satchel-cli
bin=$PWD/target/release/satchel

rm -rf "$root"; mkdir -p "$root"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

now() { date +%s.%N; }
timed() { # timed VAR cmd... : runs cmd after a sync, stores seconds in VAR
  local var=$1; shift; sync; local t0; t0=$(now)
  "$@" || { echo "benchmark step failed: $*" >&2; exit 1; }
  printf -v "$var" '%s' "$(echo "$(now) - $t0" | bc -l)"
}

echo "preparing ${BIG_MB} MiB file and ${SMALL} x 4 KiB files..." >&2
mkdir -p "$root/src"
head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom > "$root/src/big.bin"
python3 - "$root/src/small" "$SMALL" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, f"{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(4096))
PY

# Satchel server on the same disk.
"$bin" serve --data-dir "$root/data" --listen 127.0.0.1:0 > "$root/server.out" 2>"$root/server.err" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$root/server.out" 2>/dev/null && break; sleep 0.1; done
export SATCHEL_URL=$(sed -n 's/^listening on //p' "$root/server.out")
export SATCHEL_TOKEN=$(cat "$root/data/admin.token")
export SATCHEL_PIPELINE=bench SATCHEL_JOB=bench

# Loopback peer for the tar + curl baselines.
mkdir -p "$root/www"
python3 bench/sink.py "$root/www" > "$root/sink.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$root/sink.out" ] && break; sleep 0.1; done
sink="http://127.0.0.1:$(head -1 "$root/sink.out")"

# --- 1 GiB ---------------------------------------------------------------
timed dd_write dd if="$root/src/big.bin" of="$root/dd.out" bs=4M conv=fdatasync status=none
rm -f "$root/dd.out"
cd "$root/src"
timed up_big env SATCHEL_RUN=1 "$bin" artifact upload --quiet big.bin
cd "$root"
timed dd_copy dd if="$root/src/big.bin" of="$root/copy.out" bs=4M status=none
rm -f "$root/copy.out"
mkdir -p "$root/dl1"; cd "$root/dl1"
timed down_big env SATCHEL_RUN=1 "$bin" artifact download --quiet big.bin .
cmp -s big.bin "$root/src/big.bin" || { echo "downloaded big.bin differs" >&2; exit 1; }
rm -f big.bin

# --- many small files -------------------------------------------------------
cd "$root/src"
tar_put() { tar cf - small | curl -sf -T - -o /dev/null "$sink/upload.tar"; }
timed tar_up tar_put
timed up_small env SATCHEL_RUN=2 "$bin" artifact upload --quiet 'small/**'
tar cf "$root/www/small.tar" small
mkdir -p "$root/tarx"; cd "$root/tarx"
tar_get() { curl -sf "$sink/small.tar" | tar xf -; }
timed tar_down tar_get
mkdir -p "$root/dl2"; cd "$root/dl2"
timed down_small env SATCHEL_RUN=2 "$bin" artifact download --quiet 'small/**' .
diff -rq small "$root/src/small" > /dev/null || { echo "downloaded small files differ" >&2; exit 1; }

# --- dedup: the same content again in a new run ----------------------------
cd "$root/src"
resend=$(SATCHEL_RUN=3 "$bin" artifact upload --json big.bin | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_sent"])')

mb=$((BIG_MB * 1048576))
smb=$((SMALL * 4096))
row() { # name bytes satchel_s baseline_name baseline_s
  printf '%-26s %9.2f s %9.1f MB/s | %-28s %9.2f s %9.1f MB/s | ratio %5.2f\n' \
    "$1" "$3" "$(echo "$2 / $3 / 1000000" | bc -l)" "$4" "$5" "$(echo "$2 / $5 / 1000000" | bc -l)" "$(echo "$5 / $3" | bc -l)"
}
echo
echo "Satchel benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)); ratio = baseline time / satchel time"
row "upload ${BIG_MB} MiB" "$mb" "$up_big" "dd conv=fdatasync" "$dd_write"
row "download ${BIG_MB} MiB" "$mb" "$down_big" "dd copy (no sync)" "$dd_copy"
row "upload ${SMALL} x 4 KiB" "$smb" "$up_small" "tar | curl -T (loopback)" "$tar_up"
row "download ${SMALL} x 4 KiB" "$smb" "$down_small" "curl | tar x (loopback)" "$tar_down"
printf 'files/s: upload %.0f, download %.0f\n' "$(echo "$SMALL / $up_small" | bc -l)" "$(echo "$SMALL / $down_small" | bc -l)"
echo "re-upload of unchanged ${BIG_MB} MiB into a new run sent $resend bytes"
