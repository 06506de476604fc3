#!/usr/bin/env bash
# The trace relay's benchmark (issue 24): CPU per span against a floor, peak
# RSS at 10k spans/s, idle RSS with the relay on, and the binary's size.
#
# In: a dynostat binary (DYNOSTAT_BIN; default dist/dynostat-<arch>, what
# scripts/release-build.sh writes), examples/traceload.rs (built here with
# rustc) and scripts/bench/intake.py (the stand-in intake, 202 to every POST).
# Each round runs the floor (`traceload floor`: an HTTP server that reads and
# discards the same bodies) and dynostat (the relay forwarding to the intake,
# every trace kept: priority 1), one after the other, under the same load
# (`traceload send`: v0.4 msgpack, 5-span web traces, 10 requests a second,
# parameterized SQL); then one dynostat round with a distinct SQL query in
# every trace (`--sql-literals 1`), the worst case, reported apart.
# Out: a markdown table on stdout; raw JSON lines in $BENCH_OUT/traces-<date>/.
# Never: sends anywhere but 127.0.0.1, leaves a process running (a trap stops
# every process it started, by pid), or waits without a bound.
#
# Usage: scripts/bench/traces.sh > traces.md
# Knobs: DYNOSTAT_BIN, BENCH_OUT (bench-out), TRACE_BENCH_ROUNDS (3),
# TRACE_BENCH_RATE (10000 spans/s), TRACE_BENCH_SECONDS (20),
# TRACE_BENCH_PORT (18400; the intake takes +1, the statsd port +2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${DYNOSTAT_BIN:-${ROOT}/dist/dynostat-$(uname -m)}
OUT=${BENCH_OUT:-${ROOT}/bench-out}
ROUNDS=${TRACE_BENCH_ROUNDS:-3}
RATE=${TRACE_BENCH_RATE:-10000}
SECONDS_LOAD=${TRACE_BENCH_SECONDS:-20}
PORT=${TRACE_BENCH_PORT:-18400}
INTAKE_PORT=$((PORT + 1))
STATSD_PORT=$((PORT + 2))

log() { echo "traces-bench: ${*}" >&2; }
[[ -x ${BIN} ]] || {
	log "no binary at ${BIN}; build it with scripts/release-build.sh or set DYNOSTAT_BIN"
	exit 2
}
RUN=${OUT}/traces-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "${RUN}"
RESULTS=${RUN}/results.jsonl
: >"${RESULTS}"

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "${p}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
}
trap cleanup EXIT

TRACELOAD=${RUN}/traceload
log "building traceload (rustc -C opt-level=3 examples/traceload.rs)"
rustc --edition 2021 -C opt-level=3 "${ROOT}/examples/traceload.rs" -o "${TRACELOAD}"

python3 "${ROOT}/scripts/bench/intake.py" "${INTAKE_PORT}" "${RUN}/intake.json" 3600 2>"${RUN}/intake.log" &
PIDS+=($!)

# Waits (at most 10 s) until something listens on TCP 127.0.0.1:$1.
wait_tcp() {
	local i
	for ((i = 0; i < 200; i++)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/${1}") 2>/dev/null; then
			return 0
		fi
		sleep 0.05
	done
	log "nothing listens on ${1}"
	return 1
}

start_dynostat() {
	env -i PATH="${PATH}" DD_API_KEY=bench-key-not-real \
		DD_DD_URL="http://127.0.0.1:${INTAKE_PORT}" DD_APM_DD_URL="http://127.0.0.1:${INTAKE_PORT}" \
		DD_DOGSTATSD_PORT="${STATSD_PORT}" DD_APM_RECEIVER_PORT="${PORT}" \
		"${BIN}" serve 2>>"${RUN}/dynostat.log" &
	SERVER=$!
	PIDS+=("${SERVER}")
	wait_tcp "${PORT}"
}

start_floor() {
	"${TRACELOAD}" floor --port "${PORT}" --seconds 600 2>>"${RUN}/floor.log" &
	SERVER=$!
	PIDS+=("${SERVER}")
	wait_tcp "${PORT}"
}

stop_server() {
	kill -TERM "${SERVER}" 2>/dev/null || true
	local i
	for ((i = 0; i < 200; i++)); do
		kill -0 "${SERVER}" 2>/dev/null || return 0
		sleep 0.05
	done
	kill -KILL "${SERVER}" 2>/dev/null || true
}

wait_intake() {
	local i
	for ((i = 0; i < 200; i++)); do
		[[ -s ${RUN}/intake.json ]] && return 0
		sleep 0.05
	done
}

# 1. Idle RSS with the relay on: after 12 s (the first 10 s flush is in).
start_dynostat
sleep 12
idle_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${SERVER}/status")
stop_server
wait_intake
echo "{\"server\":\"dynostat\",\"phase\":\"idle\",\"rss_kib\":${idle_rss}}" >>"${RESULTS}"
log "idle RSS ${idle_rss} KiB"

# 2. CPU rounds, the floor and dynostat alternating.
for ((r = 1; r <= ROUNDS; r++)); do
	for server in floor dynostat; do
		if [[ ${server} == floor ]]; then start_floor; else start_dynostat; fi
		line=$("${TRACELOAD}" send --port "${PORT}" --rate "${RATE}" --seconds "${SECONDS_LOAD}" --server-pid "${SERVER}")
		stop_server
		echo "{\"server\":\"${server}\",\"round\":${r},\"result\":${line}}" >>"${RESULTS}"
		log "round ${r} ${server}: ${line}"
	done
done

# One more dynostat round where every trace's SQL is a distinct query
# (literals in the text): the obfuscation cache never hits. Reported apart,
# as the worst case; the rounds above send parameterized SQL, as tracers
# record it from psycopg or node-postgres.
start_dynostat
line=$("${TRACELOAD}" send --port "${PORT}" --rate "${RATE}" --seconds "${SECONDS_LOAD}" --server-pid "${SERVER}" --sql-literals 1)
stop_server
echo "{\"server\":\"dynostat-literals\",\"round\":1,\"result\":${line}}" >>"${RESULTS}"
log "literal SQL dynostat: ${line}"

python3 - "${RESULTS}" "${BIN}" "${RATE}" <<'EOF'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
idle = next(r["rss_kib"] for r in rows if r.get("phase") == "idle")
per = {"floor": [], "dynostat": [], "dynostat-literals": []}
hwm = []
for r in rows:
    if "result" in r:
        res = r["result"]
        per[r["server"]].append(res["cpu_s"] / res["spans"] * 1e6)
        if r["server"] == "dynostat":
            hwm.append(res["hwm_kib"])
f = statistics.median(per["floor"])
d = statistics.median(per["dynostat"])
size = os.path.getsize(sys.argv[2])
print("| measure | figure | target |")
print("|---|---|---|")
print(f"| CPU per span, dynostat (median of {len(per['dynostat'])}) | {d:.2f} µs | |")
print(f"| CPU per span, floor (reads and discards the same bodies) | {f:.2f} µs | |")
print(f"| ratio to the floor | {d / f:.2f}x | ≤ 3x |")
if per["dynostat-literals"]:
    lit = statistics.median(per["dynostat-literals"])
    print(f"| CPU per span, every SQL query distinct (worst case, 1 round) | {lit:.2f} µs ({lit / f:.2f}x the floor) | |")
print(f"| peak RSS (VmHWM) at {int(sys.argv[3]):,} spans/s | {max(hwm) / 1024:.1f} MiB | |")
print(f"| idle RSS, relay on, after the first flush | {idle / 1024:.2f} MiB | ≤ 4 MiB |")
print(f"| binary ({os.path.basename(sys.argv[2])}) | {size / 1e6:.2f} MB | ≤ 12 MB |")
EOF
