#!/usr/bin/env bash
# Idle RSS of dynostat with forwarding configured (issue 12's last target).
#
# In: a dynostat binary (argument 1; default dist/dynostat-<arch>, what
# scripts/release-build.sh writes). It starts scripts/bench/intake.py on
# 127.0.0.1 (answers 202 to every POST), then the binary with only
# DD_DOGSTATSD_PORT, DD_API_KEY (not a real key), DD_DD_URL pointing at that
# intake and DYNOSTAT_FLUSH_INTERVAL set, and reads /proc/PID/status before
# the first flush and after each of the first IDLE_RSS_FLUSHES flushes (no
# metrics are sent: each flush carries only dynostat's own telemetry, turned
# on with DD_DOGSTATSD_STATS_ENABLE=true so that each flush is one request).
# Out: one markdown table on stdout (VmRSS, RssAnon, RssFile, VmHWM, threads);
# with IDLE_RSS_SMAPS=1, the per-mapping Rss/Anonymous of the last reading
# too. Progress on stderr.
# Never: sends anywhere but 127.0.0.1, leaves a process running (a trap stops
# both by pid), or waits without a bound.
#
# Usage: scripts/bench/idle-rss.sh [BINARY] > table.md
# Knobs: IDLE_RSS_FLUSHES (5), IDLE_RSS_INTERVAL (1, seconds per flush),
# IDLE_RSS_PORT (18970: the statsd port; the intake takes PORT+1),
# IDLE_RSS_SMAPS (0), IDLE_RSS_ENV (extra NAME=VALUE words for the server's
# environment, e.g. GLIBC_TUNABLES=glibc.malloc.arena_max=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-${ROOT}/dist/dynostat-$(uname -m)}
FLUSHES=${IDLE_RSS_FLUSHES:-5}
INTERVAL=${IDLE_RSS_INTERVAL:-1}
PORT=${IDLE_RSS_PORT:-18970}
INTAKE_PORT=$((PORT + 1))
SMAPS=${IDLE_RSS_SMAPS:-0}
read -r -a EXTRA_ENV <<<"${IDLE_RSS_ENV:-}"

log() { echo "idle-rss: ${*}" >&2; }
[[ -x ${BIN} ]] || {
	log "no binary at ${BIN}; build it with scripts/release-build.sh or pass its path"
	exit 2
}

TMP=$(mktemp -d)
INTAKE_PID=""
SERVER_PID=""
cleanup() {
	local p
	for p in ${SERVER_PID} ${INTAKE_PID}; do
		kill -TERM "${p}" 2>/dev/null || continue
		for _ in $(seq 1 50); do
			kill -0 "${p}" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "${p}" 2>/dev/null || true
	done
	rm -rf "${TMP}"
}
trap cleanup EXIT

python3 "${ROOT}/scripts/bench/intake.py" "${INTAKE_PORT}" "${TMP}/intake.json" 600 \
	2>"${TMP}/intake.err" &
INTAKE_PID=$!
for _ in $(seq 1 100); do
	grep -qi ":$(printf '%04X' "${INTAKE_PORT}") 00000000:0000 0A" /proc/net/tcp 2>/dev/null && break
	sleep 0.05
done

# Requests the intake has answered so far.
requests() {
	python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["requests"])
except (OSError, ValueError): print(0)' "${TMP}/intake.json"
}

status_kib() { awk -v k="${1}:" '$1 == k { print $2 }' "/proc/${SERVER_PID}/status"; }
mib() { awk -v k="${1}" 'BEGIN { printf "%.2f", k / 1024 }'; }
row() {
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${1}" "${2}" \
		"$(mib "$(status_kib VmRSS)")" "$(mib "$(status_kib RssAnon)")" \
		"$(mib "$(status_kib RssFile)")" "$(mib "$(status_kib VmHWM)")" \
		"$(status_kib Threads)"
}

# Each flush is seen by its request at the intake: with no metric sent, only
# dynostat's own telemetry makes one, which is off by default since issue 25.
env -i "PATH=${PATH}" "DD_DOGSTATSD_PORT=${PORT}" DD_API_KEY=idle-rss-not-a-real-key \
	DD_DOGSTATSD_STATS_ENABLE=true "DD_DD_URL=http://127.0.0.1:${INTAKE_PORT}" "DYNOSTAT_FLUSH_INTERVAL=${INTERVAL}" \
	"${EXTRA_ENV[@]}" "${BIN}" serve >"${TMP}/server.out" 2>"${TMP}/server.err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
	grep -q listening "${TMP}/server.err" 2>/dev/null && break
	sleep 0.05
done
grep -q listening "${TMP}/server.err" || {
	log "dynostat did not start:"
	cat "${TMP}/server.err" >&2
	exit 1
}

echo "| reading | intake requests | VmRSS MiB | RssAnon MiB | RssFile MiB | VmHWM MiB | threads |"
echo "|---|---|---|---|---|---|---|"
sleep 0.2
row "ready, before the first flush" "$(requests)"
seen=$(requests)
# Waits for a request beyond the last reading (a flush has been delivered),
# then a little more for the sender to go idle.
wait_request() {
	local deadline=$((SECONDS + 10 * INTERVAL + 10))
	until (($(requests) > seen)); do
		((SECONDS < deadline)) || {
			log "no request reached the intake within $((10 * INTERVAL + 10)) s:"
			cat "${TMP}/server.err" >&2
			exit 1
		}
		sleep 0.05
	done
	sleep 0.3
	seen=$(requests)
}
for n in $(seq 1 "${FLUSHES}"); do
	wait_request
	row "after flush ${n}" "${seen}"
done

if [[ ${SMAPS} == 1 ]]; then
	# The working set of one interval: clear the referenced bits, wait for
	# one more delivered flush, and read which resident pages were touched.
	echo 1 >"/proc/${SERVER_PID}/clear_refs"
	wait_request
	echo
	echo "Mappings with Rss > 0, and what of them one flush interval touched (KiB):"
	echo
	echo '```'
	awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6); perms = $2; size = 0 }
		$1 == "Size:" { size = $2 }
		$1 == "Rss:" { rss = $2 }
		$1 == "Referenced:" { ref = $2 }
		$1 == "Anonymous:" { anon = $2 }
		$1 == "VmFlags:" { if (rss > 0) printf "%s size %6d  rss %6d  anon %6d  referenced %6d  %s\n", perms, size, rss, anon, ref, name;
			trss += rss; tref += ref }
		END { printf "total rss %d KiB, referenced in the interval %d KiB\n", trss, tref }' \
		"/proc/${SERVER_PID}/smaps"
	echo '```'
fi
