#!/usr/bin/env bash
# The web UI on a run with 10,000 files (issue 11's "fast on a run with
# 10,000 files"): the best of five requests of each page and API twin, on
# one artifact of 10,000 small files. Absolute times on this shared machine,
# not ratios (no peer serves these pages); `cargo build` first, or set BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/debug/satchel}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
$BIN serve --listen 127.0.0.1:0 --data-dir $d/data > $d/out 2>$d/err &
pid=$!
sleep 1.5
url=$(head -1 $d/out | sed 's/listening on //'); tok=$(cat $d/data/admin.token)
mkdir -p $d/src/out
python3 - "$d/src/out" <<'PY'
import sys, os
root = sys.argv[1]
for i in range(10000):
    sub = os.path.join(root, f"dir{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    open(os.path.join(sub, f"file{i:05d}.txt"), "w").write(f"file {i}\n" * 3)
PY
(cd $d/src && SATCHEL_URL=$url SATCHEL_TOKEN=$tok SATCHEL_PIPELINE=big SATCHEL_RUN=1 SATCHEL_JOB=build $BIN artifact publish out --name many -q)
id=$(curl -s -H "Authorization: Bearer $tok" "$url/api/v1/pipelines/big/runs/1/artifacts" | python3 -c 'import json,sys; print(json.load(sys.stdin)["artifacts"][0]["id"])')
cookie=$(curl -s -D - -o /dev/null -X POST --data-urlencode "token=$tok" -d next=/ "$url/login" | grep -i '^set-cookie' | sed 's/^[Ss]et-[Cc]ookie: //; s/;.*//')
t() { # label url [auth]
  best=999
  for i in 1 2 3 4 5; do
    s=$(curl -s -o /dev/null -w '%{time_total} %{http_code} %{size_download}' "${@:3}" "$2")
    v=${s%% *}; code=$(echo $s | cut -d' ' -f2); size=${s##* }
    best=$(python3 -c "print(min($best, $v))")
  done
  printf '%-46s %6.1f ms  %s  %s bytes\n' "$1" "$(python3 -c "print($best*1000)")" "$code" "$size"
}
t "UI run page" "$url/p/big/runs/1" -H "Cookie: $cookie"
t "UI artifact page (files 1-100)" "$url/artifacts/$id" -H "Cookie: $cookie"
cur=$(curl -s -H "Authorization: Bearer $tok" "$url/api/v1/artifacts/$id?limit=9900" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"])')
t "UI artifact page (files 9901-10000)" "$url/artifacts/$id?cursor=$cur" -H "Cookie: $cookie"
t "UI search **/file09999.txt" "$url/p/big/runs/1/search?query=**/file09999.txt" -H "Cookie: $cookie"
t "UI search dir42/** (100 files)" "$url/p/big/runs/1/search?query=dir42/**" -H "Cookie: $cookie"
t "UI lines of one file" "$url/artifacts/$id/lines/dir07/file00007.txt" -H "Cookie: $cookie"
t "API artifact + 1,000 files" "$url/api/v1/artifacts/$id" -H "Authorization: Bearer $tok"
t "API search **/file09999.txt" "$url/api/v1/pipelines/big/runs/latest/search?query=**/file09999.txt" -H "Authorization: Bearer $tok"
t "API pipelines storage figures" "$url/api/v1/storage" -H "Authorization: Bearer $tok"
t "zip of the 10,000 files (streamed)" "$url/api/v1/artifacts/$id/archive?format=zip" -H "Authorization: Bearer $tok"
uptime
kill $pid
