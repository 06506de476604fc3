#!/usr/bin/env bash
# Instruction count per line of dynostat's receive thread, under callgrind,
# in steady state: a warm-up pass sends every context of the load first
# (the cold path that creates contexts runs there), the counts so far are
# dumped apart (callgrind_control -d), then the measured pass runs; the flush interval is
# an hour, so no flush falls inside it unless the run crosses the hour.
#
# In: a dynostat binary (keep its symbols for the per-function breakdown:
# CARGO_PROFILE_RELEASE_STRIP=none), a load shape, and bench-out/loadgen
# (scripts/bench.sh builds it). Out: on stdout, one line per run:
# "shape lines instructions per-line", then the top functions of the receive
# thread (inclusive, per line); the callgrind files stay in $OUT.
# Never: sends anywhere but 127.0.0.1, or leaves dynostat running (a trap
# stops it by pid).
#
# Usage: scripts/bench/callgrind.sh DYNOSTAT_BIN [mixed|long|counters] [OUT]
# Knobs (environment): CG_RATE (lines/s; 20000, or 2000 for long),
# CG_LINES (200000, or 20000 for long), CG_PORT (18650), CG_TOP (25).
# Instruction counts are repeatable on a loaded machine, unlike CPU time;
# the kernel's share (receiving, copying) is not in them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:?usage: callgrind.sh DYNOSTAT_BIN [mixed|long|counters] [OUT]}
SHAPE=${2:-mixed}
OUT=${3:-${ROOT}/bench-out/callgrind-$(date -u +%Y%m%dT%H%M%SZ)-${SHAPE}}
LOADGEN=${ROOT}/bench-out/loadgen
PORT=${CG_PORT:-18650}
TOP=${CG_TOP:-25}
if [[ ${SHAPE} == long ]]; then
	RATE=${CG_RATE:-2000}
	LINES=${CG_LINES:-20000}
else
	RATE=${CG_RATE:-20000}
	LINES=${CG_LINES:-200000}
fi
mkdir -p "${OUT}" "${ROOT}/bench-out"
[[ -x ${LOADGEN} ]] || rustc --edition 2021 -C opt-level=3 "${ROOT}/examples/loadgen.rs" -o "${LOADGEN}"

env -i "PATH=${PATH}" "DD_DOGSTATSD_PORT=${PORT}" DYNOSTAT_FLUSH_INTERVAL=3600 DD_LOG_LEVEL=warn \
	valgrind --tool=callgrind --separate-threads=yes \
	"--callgrind-out-file=${OUT}/callgrind.out" "${BIN}" serve \
	>"${OUT}/dynostat.out" 2>"${OUT}/valgrind.err" &
PID=$!
trap 'kill -TERM "${PID}" 2>/dev/null || true' EXIT
# Warm-up: the pool's first lines cover every context (3,000 for long).
"${LOADGEN}" send --json --shape "${SHAPE}" --port "${PORT}" --wait-port-ms 30000 \
	--rate "${RATE}" --lines 6000 --drain-timeout-ms 60000 >"${OUT}/warmup.json"
callgrind_control -d "${PID}" >/dev/null
"${LOADGEN}" send --json --shape "${SHAPE}" --port "${PORT}" \
	--server-pid "${PID}" --rate "${RATE}" --lines "${LINES}" --drain-timeout-ms 60000 \
	>"${OUT}/load.json"
kill -TERM "${PID}"
for _ in $(seq 1 600); do # up to 60 s: the final flush under valgrind
	kill -0 "${PID}" 2>/dev/null || break
	sleep 0.1
done
wait "${PID}" 2>/dev/null || true
trap - EXIT

# The receive thread is the busiest one under the load (serve starts other
# threads before it now: the SIGTERM deadline, the watchdog, the collectors).
python3 - "${OUT}" "${SHAPE}" "${TOP}" <<'EOF'
import glob, json, subprocess, sys
out, shape, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = json.load(open(f"{out}/load.json"))
lines = load["received_lines_socket"]
if load["socket_drops"]:
    print(f"warning: {load['socket_drops']} datagrams dropped under valgrind; lower CG_RATE", file=sys.stderr)
def annotate(path):
    return subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
def program_total(text):
    for line in text.splitlines():
        if line.strip().endswith("PROGRAM TOTALS"):
            return int(line.split()[0].replace(",", ""))
    return 0
files = [f for f in glob.glob(f"{out}/callgrind.out-*") if ".1-" not in f]
if not files:
    sys.exit("no per-thread callgrind file")
text = max((annotate(f) for f in files), key=program_total)
total = None
rows = []
for line in text.splitlines():
    s = line.strip()
    if total is None and s.endswith("PROGRAM TOTALS"):
        total = int(s.split()[0].replace(",", ""))
        continue
    parts = s.split(None, 2)
    if total is not None and len(parts) >= 2 and parts[0].replace(",", "").isdigit() and "(" in parts[1]:
        name = parts[-1] if len(parts) == 3 else parts[1]
        rows.append((int(parts[0].replace(",", "")), name))
print(f"{shape}: {lines} lines, receive thread {total:,} instructions, {total / lines:,.0f} per line")
for ir, name in rows[:top]:
    print(f"  {ir / lines:9,.1f}  {name[:150]}")
EOF
