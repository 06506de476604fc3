#!/usr/bin/env bash
# What the Postgres and Redis checks cost dynostat (issue 23): CPU per
# collection and resident memory, with the checks on against the same
# binary with them off.
#
# In: a dynostat binary (argument 1; default dist/dynostat-<arch>). It starts
# a throwaway PostgreSQL (initdb + pg_ctl in a temp dir, as the `postgres`
# user under runuser when run as root, since initdb refuses root) with a
# non-superuser `app` and four idle sessions, a throwaway redis-server with
# 100 keys, and scripts/bench/intake.py, all on 127.0.0.1. Then it runs the
# binary twice for CHECKS_COST_SECONDS each: checks off, then both checks
# on every CHECKS_COST_INTERVAL seconds (1, to count many runs; a dyno's
# default is 15).
# Out: one markdown table on stdout: CPU-ms of the `collectors` thread
# (/proc/PID/task/TID/schedstat) per run of both checks, VmRSS and VmHWM at the end, for each run. Progress on
# stderr.
# Never: sends anywhere but 127.0.0.1, leaves a process running (a trap
# stops them), or waits without a bound.
#
# Usage: scripts/bench/checks-cost.sh [BINARY] > table.md
# Knobs: CHECKS_COST_SECONDS (60), CHECKS_COST_INTERVAL (1),
# CHECKS_COST_PORT (18980: statsd; the intake takes +1, Postgres +2, Redis +3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$(realpath "${1:-${ROOT}/dist/dynostat-$(uname -m)}")
SECONDS_EACH=${CHECKS_COST_SECONDS:-60}
INTERVAL=${CHECKS_COST_INTERVAL:-1}
PORT=${CHECKS_COST_PORT:-18980}
INTAKE_PORT=$((PORT + 1))
PG_PORT=$((PORT + 2))
REDIS_PORT=$((PORT + 3))
PGBIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort | tail -1)
[[ -x "${PGBIN}/initdb" ]] || {
	echo "PostgreSQL is not installed; run scripts/install-test-deps.sh" >&2
	exit 1
}

WORK=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "${p}" 2>/dev/null || true; done
	run_as "${PGBIN}/pg_ctl" -D "${WORK}/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "${WORK}"
}
trap cleanup EXIT

run_as() {
	if [[ "$(id -u)" == 0 ]]; then
		local user=postgres
		id postgres >/dev/null 2>&1 || user=nobody
		runuser -u "${user}" -- "$@"
	else
		"$@"
	fi
}

echo "starting PostgreSQL on ${PG_PORT} and Redis on ${REDIS_PORT}" >&2
echo super >"${WORK}/pw"
if [[ "$(id -u)" == 0 ]]; then
	user=postgres
	id postgres >/dev/null 2>&1 || user=nobody
	chown -R "${user}" "${WORK}"
fi
run_as "${PGBIN}/initdb" -D "${WORK}/data" -U postgres --auth-local=trust \
	--auth-host=scram-sha-256 --pwfile="${WORK}/pw" >/dev/null
run_as "${PGBIN}/pg_ctl" -D "${WORK}/data" -w -t 30 -l "${WORK}/log" \
	-o "-p ${PG_PORT} -k ${WORK} -c listen_addresses=127.0.0.1 -c max_connections=20" start >/dev/null
psql_super() { PGPASSWORD=super "${PGBIN}/psql" -X -q -h 127.0.0.1 -p "${PG_PORT}" -U postgres -d postgres -c "$1" >/dev/null; }
psql_super "CREATE ROLE app LOGIN PASSWORD 'app-pw'"
psql_super "CREATE DATABASE appdb OWNER app"
for app in web web worker clock; do
	PGPASSWORD=app-pw PGAPPNAME=${app} timeout $((SECONDS_EACH * 2 + 60)) \
		"${PGBIN}/psql" -X -q -h 127.0.0.1 -p "${PG_PORT}" -U app -d appdb -c "SELECT pg_sleep($((SECONDS_EACH * 2 + 30)))" >/dev/null 2>&1 &
	pids+=($!)
done
redis-server --port "${REDIS_PORT}" --bind 127.0.0.1 --save "" --requirepass redis-pw >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "${REDIS_PORT}" -a redis-pw --no-auth-warning ping >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 100); do redis-cli -p "${REDIS_PORT}" -a redis-pw --no-auth-warning set "k${i}" "${i}" >/dev/null; done
python3 "${ROOT}/scripts/bench/intake.py" "${INTAKE_PORT}" "${WORK}/intake.json" $((SECONDS_EACH * 3 + 60)) &
pids+=($!)
sleep 0.5

# Nanoseconds on CPU (schedstat) of the thread named `collectors`, 0 if none.
collector_ns() {
	local pid=$1 t comm ns
	for t in /proc/"${pid}"/task/*; do
		comm=$(cat "${t}/comm" 2>/dev/null || true)
		if [[ "${comm}" == collectors ]]; then
			read -r ns _ <"${t}/schedstat"
			echo "${ns}"
			return
		fi
	done
	echo 0
}

measure() {
	local label=$1
	shift
	env -i PATH="${PATH}" DD_DOGSTATSD_PORT="${PORT}" DD_API_KEY=bench-not-a-real-key \
		DD_DD_URL="http://127.0.0.1:${INTAKE_PORT}" DYNOSTAT_FLUSH_INTERVAL=10 "$@" \
		"${BIN}" serve 2>"${WORK}/${label}.log" &
	local pid=$!
	sleep "${SECONDS_EACH}"
	local ns rss anon file hwm runs
	ns=$(collector_ns "${pid}")
	rss=$(awk '/^VmRSS/ {print $2}' /proc/"${pid}"/status)
	anon=$(awk '/^RssAnon/ {print $2}' /proc/"${pid}"/status)
	file=$(awk '/^RssFile/ {print $2}' /proc/"${pid}"/status)
	hwm=$(awk '/^VmHWM/ {print $2}' /proc/"${pid}"/status)
	kill "${pid}"
	wait "${pid}" || true
	runs=$((SECONDS_EACH / INTERVAL))
	local per_run="n/a (no thread)"
	if [[ "${ns}" != 0 ]]; then
		per_run=$(awk -v t="${ns}" -v r="${runs}" 'BEGIN { printf "%.3f", t / 1e6 / r }')
	fi
	mib() { awk -v k="$1" 'BEGIN { print k / 1024 }'; }
	printf '| %s | %s | %s | %s | %.2f MiB (%.2f anon, %.2f file) | %.2f MiB |\n' "${label}" \
		"$(awk -v t="${ns}" 'BEGIN { printf "%.1f", t / 1e6 }')" "${runs}" "${per_run}" \
		"$(mib "${rss}")" "$(mib "${anon}")" "$(mib "${file}")" "$(mib "${hwm}")"
}

echo "measuring: checks off, ${SECONDS_EACH} s" >&2
echo "| checks | collectors thread CPU-ms | runs of both checks | CPU-ms per run (Postgres + Redis) | VmRSS at the end (RssAnon, RssFile) | VmHWM |"
echo "|---|---|---|---|---|---|"
measure off
echo "measuring: checks on every ${INTERVAL} s, ${SECONDS_EACH} s" >&2
measure on DD_ENABLE_HEROKU_POSTGRES=true DD_ENABLE_HEROKU_REDIS=true DYNOSTAT_CHECKS_INTERVAL="${INTERVAL}" \
	DATABASE_URL="postgres://app:app-pw@127.0.0.1:${PG_PORT}/appdb?sslmode=disable" \
	REDIS_URL="redis://:redis-pw@127.0.0.1:${REDIS_PORT}"
grep -c "check failed" "${WORK}/on.log" >&2 || true
