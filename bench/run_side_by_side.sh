#!/usr/bin/env bash
# medvault vs Orthanc, side by side, in one command:
#
#   bench/run_side_by_side.sh [extra dicomweb_bench.py options, e.g. --concurrency 8 --batch 20]
#
# 1. generates the data set if it is missing (default bench/data/ct2000: 20 studies x 2 series x 50
#    512x512 CT instances, ~1.05 GB; gitignored),
# 2. starts Orthanc (Debian 1.10 + DICOMweb plugin 1.7) in a temp dir: HTTP 127.0.0.1:19042, DICOMweb at
#    /dicom-web, HTTP basic auth on, DICOM port 19043, default filesystem storage + SQLite index,
#    "StorageCompression": false, "HttpCompressionEnabled": false (the client asks for identity anyway),
# 3. starts medvault (`medvault init` + `medvault apikeys create --role archivist` + `medvault serve`, temp home, HTTPS on 127.0.0.1:19044, Bearer key),
# 4. runs bench/dicomweb_bench.py against both, medvault first (ratios are medvault/orthanc), prints the
#    tables and writes bench/results/side_by_side.json (plus on-disk store sizes and server memory),
# 5. stops both servers by PID (trap) and deletes their temp dirs.
#
# FAIRNESS NOTE: medvault is measured over HTTPS (private CA), encrypts every object at rest and checks a
# Bearer key per request. Orthanc stores plain files and is measured twice, each instance with its own
# store: "orthanc" over plain HTTP with HTTP basic auth, and "orthanc-tls" behind nginx terminating TLS
# (how Orthanc's book says to serve it over HTTPS; Debian's Orthanc 1.10.1 segfaults on the first TLS
# handshake with its own "SslEnabled": true). The client pays for TLS too (Python's ssl hands it at most
# one 16 KiB record per read), so only "orthanc-tls" compares like with like on the wire; "orthanc"
# shows the cost of TLS itself. Orthanc runs with its stock defaults apart from the two switches above.
#
# Environment knobs:
#   DATA=bench/data/ct2000      data set folder (generated with GEN_ARGS if it has no manifest.json)
#   GEN_ARGS="..."              generate.py options for a missing data set (default: generator defaults)
#   ONLY=both|orthanc|medvault  which servers to run (default both; "orthanc" works before medvault exists)
#   ORTHANC_TLS=1|0             also run Orthanc behind nginx over HTTPS (default 1 when nginx is installed;
#                               apt-get install nginx-light) on ORTHANC_TLS_PORT=19045 (upstream 19046/19047)
#   OUT_JSON=bench/results/side_by_side.json
#   ORTHANC_PORT=19042 ORTHANC_DICOM_PORT=19043 MEDVAULT_PORT=19044
#   MEDVAULT_HTTP=1             also run a second medvault over plain HTTP ("medvault-http", the documented
#                               mode behind a TLS-terminating proxy; its own home, no DIMSE) on
#                               MEDVAULT_HTTP_PORT=19048: medvault's engine against Orthanc's without TLS
#   FIRST=orthanc               measure this target first (default medvault; ratios in the tables are
#                               always FIRST/OTHER); bench/rounds.sh rotates it
#   KEEP=1                      keep the servers' temp dirs (logs, stores) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
MEDVAULT_BIN=${MEDVAULT_BIN:-$ROOT/.venv/bin/medvault}
DATA=${DATA:-bench/data/ct2000}
GEN_ARGS=${GEN_ARGS:-}
ONLY=${ONLY:-both}
OUT_JSON=${OUT_JSON:-bench/results/side_by_side.json}
ORTHANC_PORT=${ORTHANC_PORT:-19042}
ORTHANC_DICOM_PORT=${ORTHANC_DICOM_PORT:-19043}
MEDVAULT_PORT=${MEDVAULT_PORT:-19044}
MEDVAULT_HTTP=${MEDVAULT_HTTP:-0}
FIRST=${FIRST:-}
prev=""
MEDVAULT_HTTP_PORT=${MEDVAULT_HTTP_PORT:-19048}
ORTHANC_BIN=${ORTHANC_BIN:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
ORTHANC_TLS_PORT=${ORTHANC_TLS_PORT:-19045}
ORTHANC_TLS_UPSTREAM_PORT=${ORTHANC_TLS_UPSTREAM_PORT:-19046}
ORTHANC_TLS_DICOM_PORT=${ORTHANC_TLS_DICOM_PORT:-19047}
if [[ -z "${ORTHANC_TLS:-}" ]]; then
    if [[ -x "$NGINX_BIN" ]]; then ORTHANC_TLS=1; else
        ORTHANC_TLS=0
        echo "nginx is not installed: Orthanc is measured over plain HTTP only (apt-get install nginx-light" \
             "adds Orthanc behind a TLS proxy)" >&2
    fi
fi
ORTHANC_DICOMWEB_PLUGIN=${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}
ORTHANC_USER=bench
ORTHANC_PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

case "$ONLY" in both | orthanc | medvault) ;; *) echo "ONLY must be both, orthanc or medvault" >&2; exit 2 ;; esac
if [[ "$ONLY" != orthanc && ! -x "$MEDVAULT_BIN" ]]; then
    echo "medvault is not installed in .venv ($MEDVAULT_BIN missing); run with ONLY=orthanc or install it" >&2
    exit 2
fi

ORTHANC_PID="" MEDVAULT_PID="" ORTHANC_DIR="" MEDVAULT_DIR="" ORTHANC_TLS_PID="" ORTHANC_TLS_DIR="" NGINX_PID=""
MEDVAULT_HTTP_PID="" MEDVAULT_HTTP_DIR=""

stop_pid() { # stop_pid PID NAME: SIGTERM, then SIGKILL after 20 s
    local pid=$1 name=$2 i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) did not stop on SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop_pid "$MEDVAULT_PID" medvault
    stop_pid "$MEDVAULT_HTTP_PID" "medvault (plain HTTP)"
    stop_pid "$ORTHANC_PID" Orthanc
    stop_pid "$NGINX_PID" nginx
    stop_pid "$ORTHANC_TLS_PID" "Orthanc (behind nginx)"
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept: ${ORTHANC_DIR:-} ${MEDVAULT_DIR:-}" >&2
    else
        [[ -n "$ORTHANC_DIR" ]] && rm -rf "$ORTHANC_DIR"
        [[ -n "$ORTHANC_TLS_DIR" ]] && rm -rf "$ORTHANC_TLS_DIR"
        [[ -n "$MEDVAULT_DIR" ]] && rm -rf "$MEDVAULT_DIR"
        [[ -n "$MEDVAULT_HTTP_DIR" ]] && rm -rf "$MEDVAULT_HTTP_DIR"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. data set
if [[ ! -f "$DATA/manifest.json" ]]; then
    echo "== generating data set in $DATA"
    # shellcheck disable=SC2086
    "$PY" bench/generate.py "$DATA" $GEN_ARGS
fi

# ---------------------------------------------------------------- 2. Orthanc
start_orthanc() { # start_orthanc DIR HTTP_PORT DICOM_PORT: start one Orthanc in DIR; sets STARTED_PID
    local dir=$1 http_port=$2 dicom_port=$3 i
    cat >"$dir/orthanc.json" <<JSON
{
  "Name": "bench-orthanc-$http_port",
  "StorageDirectory": "$dir/db",
  "IndexDirectory": "$dir/db",
  "HttpPort": $http_port,
  "DicomPort": $dicom_port,
  "DicomAet": "ORTHANC",
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true,
  "RegisteredUsers": { "$ORTHANC_USER": "$ORTHANC_PASSWORD" },
  "DicomCheckCalledAet": true,
  "Plugins": [ "$ORTHANC_DICOMWEB_PLUGIN" ],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" },
  "StorageCompression": false,
  "HttpCompressionEnabled": false
}
JSON
    "$ORTHANC_BIN" "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
    STARTED_PID=$!
    for i in $(seq 300); do
        curl -sf -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "http://127.0.0.1:$http_port/system" -o /dev/null && break
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then cat "$dir/orthanc.log" >&2; exit 1; fi
        [[ $i == 300 ]] && { echo "Orthanc not ready after 30 s" >&2; tail -20 "$dir/orthanc.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== Orthanc $(curl -s -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "http://127.0.0.1:$http_port/system" |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Version"])') ready (pid $STARTED_PID, dir $dir)"
}

start_tls_proxy() { # start_tls_proxy DIR TLS_PORT UPSTREAM_PORT: nginx terminating TLS for an Orthanc
    local dir=$1 tls_port=$2 upstream=$3 i
    mkdir -p "$dir/nginx"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$dir/nginx/key.pem" -out "$dir/nginx/cert.pem" 2>/dev/null
    cat >"$dir/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
daemon off;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    upstream orthanc { server 127.0.0.1:$upstream; keepalive 16; }
    server {
        listen 127.0.0.1:$tls_port ssl;
        ssl_certificate $dir/nginx/cert.pem;
        ssl_certificate_key $dir/nginx/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering on;
        proxy_buffer_size 64k;
        proxy_buffers 32 64k;
        proxy_busy_buffers_size 1m;
        proxy_max_temp_file_size 0;
        location / {
            proxy_pass http://orthanc;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
NGINX
    chmod 755 "$dir" "$dir/nginx"
    "$NGINX_BIN" -c "$dir/nginx/nginx.conf" >"$dir/nginx/stdout.log" 2>&1 &
    STARTED_PID=$!
    for i in $(seq 100); do
        curl -sf --cacert "$dir/nginx/cert.pem" -u "$ORTHANC_USER:$ORTHANC_PASSWORD" \
            "https://127.0.0.1:$tls_port/system" -o /dev/null && break
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then cat "$dir/nginx/error.log" >&2; exit 1; fi
        [[ $i == 100 ]] && { echo "nginx not ready after 10 s" >&2; cat "$dir/nginx/error.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///') terminating TLS on $tls_port for Orthanc on $upstream"
}

TARGETS=()
if [[ "$ONLY" != medvault ]]; then
    ORTHANC_DIR=$(mktemp -d /tmp/medvault-bench-orthanc.XXXXXX)
    ORTHANC_NAME=orthanc
    ORTHANC_BASE="http://127.0.0.1:$ORTHANC_PORT"
    start_orthanc "$ORTHANC_DIR" "$ORTHANC_PORT" "$ORTHANC_DICOM_PORT"
    ORTHANC_PID=$STARTED_PID
    if [[ "$ORTHANC_TLS" == 1 ]]; then
        # a second, independent Orthanc (its own store) behind nginx: HTTPS against HTTPS
        ORTHANC_TLS_DIR=$(mktemp -d /tmp/medvault-bench-orthanc-tls.XXXXXX)
        start_orthanc "$ORTHANC_TLS_DIR" "$ORTHANC_TLS_UPSTREAM_PORT" "$ORTHANC_TLS_DICOM_PORT"
        ORTHANC_TLS_PID=$STARTED_PID
        start_tls_proxy "$ORTHANC_TLS_DIR" "$ORTHANC_TLS_PORT" "$ORTHANC_TLS_UPSTREAM_PORT"
        NGINX_PID=$STARTED_PID
    fi
fi

# ---------------------------------------------------------------- 3. medvault
start_medvault() { # start_medvault DIR PORT https|http: init a home in DIR, serve it; sets STARTED_PID, STARTED_KEY
    local dir=$1 port=$2 scheme=$3 home="$1/home" i
    "$MEDVAULT_BIN" init --home "$home" >"$dir/init.out" 2>"$dir/init.err" || {
        echo "medvault init failed:" >&2; cat "$dir/init.out" "$dir/init.err" >&2; exit 1; }
    if [[ "$scheme" == http ]]; then
        # the documented mode behind a TLS-terminating proxy; no DIMSE listener (the other one has it)
        sed -i 's/^plain_http = false/plain_http = true/' "$home/medvault.toml"
        sed -i '/^\[dimse\]/,/^\[/ s/^enabled = true/enabled = false/' "$home/medvault.toml"
    fi
    # The administrator sees no images; the bench stores, reads and deletes through an archivist key.
    "$MEDVAULT_BIN" apikeys create bench --role archivist --home "$home" >"$dir/key.out" \
        2>"$dir/key.err" || { echo "medvault apikeys create failed:" >&2; cat "$dir/key.err" >&2; exit 1; }
    STARTED_KEY=$(awk 'NF { last = $0 } END { print last }' "$dir/key.out" | tr -d '[:space:]')
    [[ -n "$STARTED_KEY" ]] || { echo "medvault init printed no API key" >&2; exit 1; }
    "$MEDVAULT_BIN" serve --home "$home" --host 127.0.0.1 --port "$port" >"$dir/serve.log" 2>&1 &
    STARTED_PID=$!
    for i in $(seq 600); do
        if [[ "$scheme" == http ]]; then
            curl -sf "http://127.0.0.1:$port/healthz" -o /dev/null && break
        elif [[ -f "$home/tls/ca.crt" ]] && curl -sf --cacert "$home/tls/ca.crt" "https://127.0.0.1:$port/healthz" -o /dev/null; then
            break
        fi
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            echo "medvault serve exited:" >&2; tail -40 "$dir/serve.log" >&2; exit 1
        fi
        [[ $i == 600 ]] && { echo "medvault not ready after 60 s" >&2; tail -40 "$dir/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== medvault ($scheme) ready (pid $STARTED_PID, home $home)"
}

if [[ "$ONLY" != orthanc ]]; then
    MEDVAULT_PASSPHRASE=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    export MEDVAULT_PASSPHRASE
    MEDVAULT_DIR=$(mktemp -d /tmp/medvault-bench-home.XXXXXX)
    MV_HOME="$MEDVAULT_DIR/home"
    start_medvault "$MEDVAULT_DIR" "$MEDVAULT_PORT" https
    MEDVAULT_PID=$STARTED_PID
    export MEDVAULT_BENCH_KEY=$STARTED_KEY
    TARGETS+=(--target "medvault=https://127.0.0.1:$MEDVAULT_PORT/dicomweb"
              --auth "medvault=bearer-env:MEDVAULT_BENCH_KEY" --ca "medvault=$MV_HOME/tls/ca.crt")
    if [[ "$MEDVAULT_HTTP" == 1 ]]; then
        MEDVAULT_HTTP_DIR=$(mktemp -d /tmp/medvault-bench-http-home.XXXXXX)
        start_medvault "$MEDVAULT_HTTP_DIR" "$MEDVAULT_HTTP_PORT" http
        MEDVAULT_HTTP_PID=$STARTED_PID
        export MEDVAULT_HTTP_KEY=$STARTED_KEY
        TARGETS+=(--target "medvault-http=http://127.0.0.1:$MEDVAULT_HTTP_PORT/dicomweb"
                  --auth "medvault-http=bearer-env:MEDVAULT_HTTP_KEY")
    fi
fi
if [[ "$ONLY" != medvault ]]; then
    TARGETS+=(--target "$ORTHANC_NAME=$ORTHANC_BASE/dicom-web"
              --auth "$ORTHANC_NAME=basic:$ORTHANC_USER:$ORTHANC_PASSWORD")
    if [[ "$ORTHANC_TLS" == 1 ]]; then
        TARGETS+=(--target "orthanc-tls=https://127.0.0.1:$ORTHANC_TLS_PORT/dicom-web"
                  --auth "orthanc-tls=basic:$ORTHANC_USER:$ORTHANC_PASSWORD"
                  --ca "orthanc-tls=$ORTHANC_TLS_DIR/nginx/cert.pem")
    fi
fi

# ---------------------------------------------------------------- 4. benchmark
mkdir -p "$(dirname "$OUT_JSON")"
set +e
if [[ -n "$FIRST" ]]; then # move one target's arguments (from its --target to the next) to the front
    FRONT=() REST=() in_first=0
    for arg in "${TARGETS[@]}"; do
        if [[ "$prev" == --target ]]; then [[ "${arg%%=*}" == "$FIRST" ]] && in_first=1 || in_first=0; fi
        if [[ "$arg" == --target ]]; then prev=--target; continue; fi
        if [[ "$prev" == --target ]]; then
            if ((in_first)); then FRONT+=(--target "$arg"); else REST+=(--target "$arg"); fi
        elif ((in_first)); then FRONT+=("$arg"); else REST+=("$arg"); fi
        prev=$arg
    done
    [[ ${#FRONT[@]} -gt 0 ]] || { echo "FIRST=$FIRST is not one of the targets" >&2; exit 2; }
    TARGETS=("${FRONT[@]}" "${REST[@]}")
fi
"$PY" bench/dicomweb_bench.py "$DATA" "${TARGETS[@]}" --json "$OUT_JSON" "$@"
BENCH_RC=$?
set -e

# store sizes on disk and memory of each server, merged into the JSON. memory_kb PID prints
# "PEAK END": the largest peak RSS of any process in the server's tree (medvault forks workers and a
# DIMSE process; each peaks briefly while scrypt unseals the keyring) and the sum of their RSS now.
memory_kb() {
    local pid peak=0 sum=0 hwm rss
    for pid in "$1" $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
        read -r hwm rss < <(awk '/VmHWM/ { h = $2 } /VmRSS/ { r = $2 } END { print h + 0, r + 0 }' \
            "/proc/$pid/status" 2>/dev/null || echo "0 0")
        ((hwm > peak)) && peak=$hwm
        sum=$((sum + rss))
    done
    echo "$peak $sum"
}
if [[ -f "$OUT_JSON" ]]; then
    SIZES=()
    add_server() { # add_server NAME PID STORE_DIR TRANSPORT AT_REST
        [[ -n "$2" ]] || return 0
        local mem
        mem=$(memory_kb "$2")
        SIZES+=("$1" "$(du -sb "$3" | cut -f1)" "${mem% *}" "${mem#* }" "$4" "$5")
    }
    add_server "${ORTHANC_NAME:-orthanc}" "$ORTHANC_PID" "${ORTHANC_DIR:-/nonexistent}/db" "HTTP (no TLS)" \
        "plain files, StorageCompression false"
    add_server orthanc-tls "$ORTHANC_TLS_PID" "${ORTHANC_TLS_DIR:-/nonexistent}/db" \
        "HTTPS: nginx terminating TLS, plain HTTP to Orthanc on loopback" "plain files, StorageCompression false"
    add_server medvault "$MEDVAULT_PID" "${MV_HOME:-/nonexistent}" "HTTPS (private CA)" "encrypted"
    add_server medvault-http "$MEDVAULT_HTTP_PID" "${MEDVAULT_HTTP_DIR:-/nonexistent}/home" \
        "plain HTTP ([server] plain_http, as behind a TLS proxy)" "encrypted"
    "$PY" - "$OUT_JSON" "${SIZES[@]}" <<'PY'
import json, sys
path, fields = sys.argv[1], sys.argv[2:]
report = json.load(open(path))
servers = {}
for i in range(0, len(fields), 6):
    name, size, peak, end, transport, at_rest = fields[i : i + 6]
    if name in report["targets"]:
        servers[name] = {"store_bytes": int(size), "peak_rss_kb": int(peak), "rss_end_kb": int(end),
                         "transport": transport, "at_rest": at_rest}
report["servers"] = servers
json.dump(report, open(path, "w"), indent=2)
for name, s in servers.items():
    print(f"{name}: store on disk {s['store_bytes'] / 1e6:.0f} MB, peak RSS {s['peak_rss_kb'] / 1024:.0f} MiB"
          f" (largest process), RSS at the end {s['rss_end_kb'] / 1024:.0f} MiB (all its processes)")
PY
fi
exit $BENCH_RC
