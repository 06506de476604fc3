#!/usr/bin/env bash
# A/B CPU rounds: the floor and one or more dynostat binaries (or wrapper
# scripts that `exec` one with extra environment) on one load, alternating
# within each round, as scripts/bench.sh does but without the peers and the
# other phases. For comparing two builds in one run on a noisy machine.
#
# In: a load shape, a round count, binaries. Out: on stdout one line per
# receiver and round, "shape rN receiver cpu-s-per-M-lines drops=N", then the
# median per receiver. Never: sends anywhere but 127.0.0.1, or leaves a
# server running (a trap stops them).
#
# Usage: scripts/bench/ab.sh SHAPE ROUNDS BIN...
# Knobs (environment): AB_RATE and AB_LINES (1000000 and 5000000; 200000 and
# 1000000 for long), AB_PORT (18800), AB_FLUSH_INTERVAL (10), AB_SETTLE_MS
# (how long after the drain a server's CPU is still counted, as in
# scripts/bench.sh; 300, the floor always 300), AB_MEMORY_LIMIT
# (DYNOSTAT_MEMORY_LIMIT, 256MiB as in scripts/bench.sh: at the default
# 64 MiB the mixed load's histogram samples fill the budget within each
# interval, and the rest of the interval runs the budget's paths). Without an API
# key the servers print their flushes to the console (sent to /dev/null).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHAPE=${1:?usage: ab.sh SHAPE ROUNDS BIN...}
ROUNDS=${2:?usage: ab.sh SHAPE ROUNDS BIN...}
shift 2
[[ $# -gt 0 ]] || { echo "ab.sh: no binary given" >&2; exit 2; }
LOADGEN=${ROOT}/bench-out/loadgen
mkdir -p "${ROOT}/bench-out"
[[ -x ${LOADGEN} ]] || rustc --edition 2021 -C opt-level=3 "${ROOT}/examples/loadgen.rs" -o "${LOADGEN}"
if [[ ${SHAPE} == long ]]; then
	RATE=${AB_RATE:-200000}
	LINES=${AB_LINES:-1000000}
else
	RATE=${AB_RATE:-1000000}
	LINES=${AB_LINES:-5000000}
fi
PORT=${AB_PORT:-18800}

pids=()
# Waits for them too: a server still flushing would hold its port.
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"${LOADGEN}" floor --port "${PORT}" --seconds 3600 >/dev/null 2>&1 &
pids+=($!)
names=(floor)
ports=("${PORT}")
i=0
for bin in "$@"; do
	i=$((i + 1))
	p=$((PORT + 2 * i))
	env -i "PATH=${PATH}" "DD_DOGSTATSD_PORT=${p}" "DYNOSTAT_FLUSH_INTERVAL=${AB_FLUSH_INTERVAL:-10}" \
		"DYNOSTAT_MEMORY_LIMIT=${AB_MEMORY_LIMIT:-256MiB}" \
		DD_LOG_LEVEL=warn "${bin}" serve >/dev/null 2>&1 &
	pids+=($!)
	names+=("${i}:$(basename "${bin}")")
	ports+=("${p}")
done
results=$(mktemp)
for r in $(seq 1 "${ROUNDS}"); do
	for k in "${!ports[@]}"; do
		settle=${AB_SETTLE_MS:-300}
		[[ ${k} == 0 ]] && settle=300
		out=$("${LOADGEN}" send --json --shape "${SHAPE}" --port "${ports[${k}]}" --wait-port-ms 10000 \
			--rate "${RATE}" --lines "${LINES}" --server-pid "${pids[${k}]}" --settle-ms "${settle}")
		cpu=$(grep -o '"cpu_s_per_m_received":[0-9.]*' <<<"${out}" | cut -d: -f2)
		drops=$(grep -o '"socket_drops":[0-9]*' <<<"${out}" | cut -d: -f2)
		echo "${SHAPE} r${r} ${names[${k}]} ${cpu} drops=${drops}" | tee -a "${results}"
	done
done
echo "median of ${ROUNDS} rounds (CPU-s per M lines received):"
for name in "${names[@]}"; do
	awk -v n="${name}" '$3 == n {print $4}' "${results}" | sort -g |
		awk -v n="${name}" '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "  %s %.4f\n", n, m}'
done
rm -f "${results}"
