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
#    tables and writes bench/results/side_by_side.json (plus on-disk store sizes and server peak RSS),
# 5. stops both servers by PID (trap) and deletes their temp dirs.
#
# FAIRNESS NOTE: medvault is measured over HTTPS (private CA), encrypts every object at rest and checks a
# Bearer key per request; Orthanc is measured over plain HTTP with HTTP basic auth and stores plain files.
# (Orthanc's TLS needs extra certificate configuration, and Debian's Orthanc 1.10.1 segfaults on the first
# TLS handshake with "SslEnabled": true, RSA or EC certificate alike.) The ratios therefore include
# medvault's TLS + encryption cost; Orthanc runs with its stock defaults apart from the two switches above.
#
# Environment knobs:
#   DATA=bench/data/ct2000      data set folder (generated with GEN_ARGS if it has no manifest.json)
#   GEN_ARGS="..."              generate.py options for a missing data set (default: generator defaults)
#   ONLY=both|orthanc|medvault  which servers to run (default both; "orthanc" works before medvault exists)
#   OUT_JSON=bench/results/side_by_side.json
#   ORTHANC_PORT=19042 ORTHANC_DICOM_PORT=19043 MEDVAULT_PORT=19044
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
ORTHANC_BIN=${ORTHANC_BIN:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}
ORTHANC_DICOMWEB_PLUGIN=${ORTHANC_DICOMWEB_PLUGIN:-/usr/share/orthanc/plugins/libOrthancDicomWeb.so}
ORTHANC_USER=bench
ORTHANC_PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

case "$ONLY" in both | orthanc | medvault) ;; *) echo "ONLY must be both, orthanc or medvault" >&2; exit 2 ;; esac
if [[ "$ONLY" != orthanc && ! -x "$MEDVAULT_BIN" ]]; then
    echo "medvault is not installed in .venv ($MEDVAULT_BIN missing); run with ONLY=orthanc or install it" >&2
    exit 2
fi

ORTHANC_PID="" MEDVAULT_PID="" ORTHANC_DIR="" MEDVAULT_DIR=""

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
    stop_pid "$ORTHANC_PID" Orthanc
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept: ${ORTHANC_DIR:-} ${MEDVAULT_DIR:-}" >&2
    else
        [[ -n "$ORTHANC_DIR" ]] && rm -rf "$ORTHANC_DIR"
        [[ -n "$MEDVAULT_DIR" ]] && rm -rf "$MEDVAULT_DIR"
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
TARGETS=()
if [[ "$ONLY" != medvault ]]; then
    ORTHANC_DIR=$(mktemp -d /tmp/medvault-bench-orthanc.XXXXXX)
    ORTHANC_NAME=orthanc
    ORTHANC_BASE="http://127.0.0.1:$ORTHANC_PORT"
    cat >"$ORTHANC_DIR/orthanc.json" <<JSON
{
  "Name": "bench-orthanc",
  "StorageDirectory": "$ORTHANC_DIR/db",
  "IndexDirectory": "$ORTHANC_DIR/db",
  "HttpPort": $ORTHANC_PORT,
  "DicomPort": $ORTHANC_DICOM_PORT,
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
    "$ORTHANC_BIN" "$ORTHANC_DIR/orthanc.json" >"$ORTHANC_DIR/orthanc.log" 2>&1 &
    ORTHANC_PID=$!
    for i in $(seq 300); do
        curl -sf -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "$ORTHANC_BASE/system" -o /dev/null && break
        if ! kill -0 "$ORTHANC_PID" 2>/dev/null; then cat "$ORTHANC_DIR/orthanc.log" >&2; exit 1; fi
        [[ $i == 300 ]] && { echo "Orthanc not ready after 30 s" >&2; tail -20 "$ORTHANC_DIR/orthanc.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== Orthanc $(curl -s -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "$ORTHANC_BASE/system" |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Version"])') ready (pid $ORTHANC_PID, dir $ORTHANC_DIR)"
fi

# ---------------------------------------------------------------- 3. medvault
if [[ "$ONLY" != orthanc ]]; then
    MEDVAULT_DIR=$(mktemp -d /tmp/medvault-bench-home.XXXXXX)
    MV_HOME="$MEDVAULT_DIR/home"
    MEDVAULT_PASSPHRASE=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    export MEDVAULT_PASSPHRASE
    "$MEDVAULT_BIN" init --home "$MV_HOME" >"$MEDVAULT_DIR/init.out" 2>"$MEDVAULT_DIR/init.err" || {
        echo "medvault init failed:" >&2; cat "$MEDVAULT_DIR/init.out" "$MEDVAULT_DIR/init.err" >&2; exit 1; }
    # The administrator sees no images; the bench stores, reads and deletes through an archivist key.
    "$MEDVAULT_BIN" apikeys create bench --role archivist --home "$MV_HOME" >"$MEDVAULT_DIR/key.out" \
        2>"$MEDVAULT_DIR/key.err" || { echo "medvault apikeys create failed:" >&2; cat "$MEDVAULT_DIR/key.err" >&2; exit 1; }
    MEDVAULT_BENCH_KEY=$(awk 'NF { last = $0 } END { print last }' "$MEDVAULT_DIR/key.out" | tr -d '[:space:]')
    export MEDVAULT_BENCH_KEY
    [[ -n "$MEDVAULT_BENCH_KEY" ]] || { echo "medvault init printed no API key" >&2; exit 1; }
    MV_CA="$MV_HOME/tls/ca.crt"
    "$MEDVAULT_BIN" serve --home "$MV_HOME" --host 127.0.0.1 --port "$MEDVAULT_PORT" \
        >"$MEDVAULT_DIR/serve.log" 2>&1 &
    MEDVAULT_PID=$!
    for i in $(seq 600); do
        if [[ -f "$MV_CA" ]] && curl -sf --cacert "$MV_CA" "https://127.0.0.1:$MEDVAULT_PORT/healthz" -o /dev/null; then
            break
        fi
        if ! kill -0 "$MEDVAULT_PID" 2>/dev/null; then
            echo "medvault serve exited:" >&2; tail -40 "$MEDVAULT_DIR/serve.log" >&2; exit 1
        fi
        [[ $i == 600 ]] && { echo "medvault not ready after 60 s" >&2; tail -40 "$MEDVAULT_DIR/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "== medvault ready (pid $MEDVAULT_PID, home $MV_HOME)"
    TARGETS+=(--target "medvault=https://127.0.0.1:$MEDVAULT_PORT/dicomweb"
              --auth "medvault=bearer-env:MEDVAULT_BENCH_KEY" --ca "medvault=$MV_CA")
fi
if [[ "$ONLY" != medvault ]]; then
    TARGETS+=(--target "$ORTHANC_NAME=$ORTHANC_BASE/dicom-web"
              --auth "$ORTHANC_NAME=basic:$ORTHANC_USER:$ORTHANC_PASSWORD")
fi

# ---------------------------------------------------------------- 4. benchmark
mkdir -p "$(dirname "$OUT_JSON")"
set +e
"$PY" bench/dicomweb_bench.py "$DATA" "${TARGETS[@]}" --json "$OUT_JSON" "$@"
BENCH_RC=$?
set -e

# store sizes on disk and peak RSS of each server, merged into the JSON
peak_rss_kb() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo null; }
if [[ -f "$OUT_JSON" ]]; then
    ORTHANC_BYTES=null ORTHANC_RSS=null MEDVAULT_BYTES=null MEDVAULT_RSS=null
    if [[ -n "$ORTHANC_PID" ]]; then
        ORTHANC_BYTES=$(du -sb "$ORTHANC_DIR/db" | cut -f1); ORTHANC_RSS=$(peak_rss_kb "$ORTHANC_PID")
    fi
    if [[ -n "$MEDVAULT_PID" ]]; then
        MEDVAULT_BYTES=$(du -sb "$MV_HOME" | cut -f1); MEDVAULT_RSS=$(peak_rss_kb "$MEDVAULT_PID")
    fi
    "$PY" - "$OUT_JSON" "$ORTHANC_BYTES" "$ORTHANC_RSS" "$MEDVAULT_BYTES" "$MEDVAULT_RSS" "${ORTHANC_NAME:-orthanc}" <<'PY'
import json, sys
path, ob, orss, mb, mrss, oname = sys.argv[1:]
num = lambda v: None if v in ("null", "") else int(v)
report = json.load(open(path))
servers = {}
if oname in report["targets"]:
    servers[oname] = {"store_bytes": num(ob), "peak_rss_kb": num(orss),
                      "transport": "HTTP (no TLS)",
                      "at_rest": "plain files, StorageCompression false"}
if "medvault" in report["targets"]:
    servers["medvault"] = {"store_bytes": num(mb), "peak_rss_kb": num(mrss),
                           "transport": "HTTPS (private CA)", "at_rest": "encrypted"}
report["servers"] = servers
json.dump(report, open(path, "w"), indent=2)
for name, s in servers.items():
    size = "-" if s["store_bytes"] is None else f"{s['store_bytes'] / 1e6:.0f} MB"
    rss = "-" if s["peak_rss_kb"] is None else f"{s['peak_rss_kb'] / 1024:.0f} MiB"
    print(f"{name}: store on disk {size}, server peak RSS {rss}")
PY
fi
exit $BENCH_RC
