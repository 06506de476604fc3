#!/usr/bin/env bash
# End-to-end benchmark: dynostat against the floor (a receiver that only reads
# the datagrams: `loadgen floor`) and peers (statsdproxy, Etsy statsd) on the
# same DogStatsD loads in the same run, all on 127.0.0.1.
#
# In: the repo (builds `dynostat` in release and `examples/loadgen.rs` with
# rustc), and the peers, which it installs into $BENCH_OUT if missing
# (`cargo install statsdproxy`, `npm install statsd`).
# Out: a markdown report on stdout; raw JSON lines and server logs in
# $BENCH_OUT/run-<date>/. Progress goes to stderr.
# Never: sends anywhere but 127.0.0.1, leaves a server running (a trap stops
# every process it started, by pid), or loops without a bound.
#
# Usage: scripts/bench.sh > report.md
#        scripts/bench.sh traces > traces.md   (the trace relay: scripts/bench/traces.sh)
# Knobs (environment): BENCH_OUT, BENCH_ROUNDS (3), BENCH_CPU_RATE (1000000),
# BENCH_CPU_LINES (5000000) for the mixed load, BENCH_LONG_RATE (200000),
# BENCH_LONG_LINES (1000000) for the long lines, BENCH_COUNTERS_RATE
# (1000000), BENCH_COUNTERS_LINES (5000000), BENCH_FAST_RATE (1000000), BENCH_FAST_LINES
# (10000000), BENCH_CTX (100000), BENCH_STARTUP_RUNS (20), BENCH_PEERS
# ("statsdproxy etsy"), BENCH_PORT_BASE (18200), BENCH_FLUSH_INTERVAL (10),
# BENCH_DYNOSTAT_OUTPUT (intake or console), BENCH_DYNOSTAT_MEMORY_LIMIT
# (DYNOSTAT_MEMORY_LIMIT for dynostat, 256MiB: the default 64 MiB admits
# about 65,000 contexts, fewer than BENCH_CTX; empty for dynostat's default),
# DYNOSTAT_BIN (skip the cargo build and use this binary), CARGO_TARGET_DIR.
set -euo pipefail

# `scripts/bench.sh traces`: the trace relay's benchmark instead (CPU per
# span against an HTTP floor, peak RSS at 10k spans/s, idle RSS with the
# relay on, binary size): scripts/bench/traces.sh, with its own knobs.
if [[ ${1:-} == traces ]]; then
	exec "$(dirname "${BASH_SOURCE[0]}")/bench/traces.sh"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${BENCH_OUT:-${ROOT}/bench-out}
ROUNDS=${BENCH_ROUNDS:-3}
CPU_RATE=${BENCH_CPU_RATE:-1000000}
CPU_LINES=${BENCH_CPU_LINES:-5000000}
LONG_RATE=${BENCH_LONG_RATE:-200000}
LONG_LINES=${BENCH_LONG_LINES:-1000000}
COUNTERS_RATE=${BENCH_COUNTERS_RATE:-1000000}
COUNTERS_LINES=${BENCH_COUNTERS_LINES:-5000000}
FAST_RATE=${BENCH_FAST_RATE:-1000000}
FAST_LINES=${BENCH_FAST_LINES:-10000000}
CTX=${BENCH_CTX:-100000}
STARTUP_RUNS=${BENCH_STARTUP_RUNS:-20}
PEERS=${BENCH_PEERS:-statsdproxy etsy}
PORT_BASE=${BENCH_PORT_BASE:-18200}
FLUSH=${BENCH_FLUSH_INTERVAL:-10}
# How long a CPU round keeps counting a server's CPU after the load has
# drained: one flush interval and a half second, so each round also pays for
# the flush of its own lines (sorting the histograms' samples, encoding,
# compressing), wherever the flush boundary falls. The floor flushes nothing.
SETTLE_MS=${BENCH_SETTLE_MS:-$((FLUSH * 1000 + 500))}
# intake: dynostat forwards (gzip JSON over HTTP) to scripts/bench/intake.py on
# 127.0.0.1, the production path; console: no API key, tables on stdout.
DYNOSTAT_OUTPUT=${BENCH_DYNOSTAT_OUTPUT:-intake}
DYNOSTAT_MEMORY_LIMIT=${BENCH_DYNOSTAT_MEMORY_LIMIT-256MiB}
STATSDPROXY_VERSION=0.4.1
ETSY_VERSION=0.9.0

RUN=${OUT}/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "${RUN}"
RESULTS=${RUN}/results.jsonl
: >"${RESULTS}"

log() { echo "bench: ${*}" >&2; }
die() {
	log "error: ${*}"
	exit 1
}

# --- processes we start, stopped by pid on exit -------------------------------
declare -a STARTED=()
declare -A PID=() PORT=()

stop_pid() {
	local p=${1}
	kill -TERM "${p}" 2>/dev/null || return 0
	for _ in $(seq 1 100); do # up to 10 s: dynostat's grace + final flush
		kill -0 "${p}" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "${p}" 2>/dev/null || true
	wait "${p}" 2>/dev/null || true
}

cleanup() {
	local p
	for p in "${STARTED[@]}"; do
		kill -0 "${p}" 2>/dev/null && stop_pid "${p}"
	done
	return 0
}
trap cleanup EXIT

# True when something has UDP port $1 bound locally (IPv4 or IPv6).
udp_bound() {
	local hex
	hex=$(printf '%04X' "${1}")
	awk -v h="${hex}" 'FNR > 1 { split($2, a, ":"); if (a[2] == h) f = 1 } END { exit !f }' \
		/proc/net/udp /proc/net/udp6 2>/dev/null
}

wait_bound() { # port, what; 10 s at most
	local _
	for _ in $(seq 1 200); do
		udp_bound "${1}" && return 0
		sleep 0.05
	done
	die "${2} did not bind UDP port ${1} within 10 s (see ${RUN}/*.err)"
}

# --- build ---------------------------------------------------------------------
build() {
	if [[ -z ${DYNOSTAT_BIN:-} ]]; then
		log "building dynostat (cargo build --release --bin dynostat)"
		(cd "${ROOT}" && cargo build --release --bin dynostat >&2)
		DYNOSTAT_BIN=${CARGO_TARGET_DIR:-${ROOT}/target}/release/dynostat
	fi
	[[ -x ${DYNOSTAT_BIN} ]] || die "no dynostat binary at ${DYNOSTAT_BIN}"
	LOADGEN=${OUT}/loadgen
	if [[ ! -x ${LOADGEN} || ${ROOT}/examples/loadgen.rs -nt ${LOADGEN} ]]; then
		log "building loadgen (rustc -C opt-level=3 examples/loadgen.rs)"
		rustc --edition 2021 -C opt-level=3 "${ROOT}/examples/loadgen.rs" -o "${LOADGEN}"
	fi
}

# --- peers -----------------------------------------------------------------------
STATSDPROXY=${OUT}/statsdproxy/bin/statsdproxy
ETSY=${OUT}/etsy/node_modules/statsd/stats.js

install_peers() {
	local ok=()
	for peer in ${PEERS}; do
		case ${peer} in
		statsdproxy)
			if [[ ! -x ${STATSDPROXY} ]]; then
				log "installing statsdproxy ${STATSDPROXY_VERSION} into ${OUT}/statsdproxy"
				CARGO_TARGET_DIR=${OUT}/cargo-target cargo install statsdproxy \
					--version "${STATSDPROXY_VERSION}" --locked --root "${OUT}/statsdproxy" >&2 ||
					log "statsdproxy install failed; skipping it"
			fi
			[[ -x ${STATSDPROXY} ]] && ok+=(statsdproxy)
			;;
		etsy)
			if [[ ! -f ${ETSY} ]]; then
				log "installing statsd@${ETSY_VERSION} (Etsy) into ${OUT}/etsy"
				mkdir -p "${OUT}/etsy"
				npm install --prefix "${OUT}/etsy" --no-audit --no-fund "statsd@${ETSY_VERSION}" >&2 ||
					log "statsd install failed; skipping it"
			fi
			[[ -f ${ETSY} ]] && command -v node >/dev/null && ok+=(etsy)
			;;
		*) die "unknown peer ${peer} (known: statsdproxy etsy)" ;;
		esac
	done
	PEERS="${ok[*]}"
}

# --- servers ---------------------------------------------------------------------
# Each server gets its own ports, from PORT_BASE: dynostat +0, statsdproxy +10
# (its upstream sink +11), etsy +20 (its TCP management port +21), the floor
# receiver +60; startup probes use +30, +40, +50.
port_of() {
	case ${1} in
	floor) echo $((PORT_BASE + 60 + ${2})) ;;
	dynostat) echo $((PORT_BASE + ${2})) ;;
	statsdproxy) echo $((PORT_BASE + 10 + ${2})) ;;
	etsy) echo $((PORT_BASE + 20 + ${2})) ;;
	esac
}

# The command line that runs server $1 on UDP port $2 (stdout: one word per line).
server_cmd() {
	local port=${2}
	case ${1} in
	floor)
		printf '%s\n' "${LOADGEN}" floor --port "${port}" --seconds 3600
		;;
	dynostat)
		local intake=()
		if [[ ${DYNOSTAT_OUTPUT} == intake ]]; then
			# Not a real key: the intake is scripts/bench/intake.py on 127.0.0.1.
			# The self-telemetry is on for the cross-check's `dynostat.lines`
			# (and so the figures compare with runs before it became opt-in).
			intake=(DD_API_KEY=bench-not-a-real-key "DD_DD_URL=http://127.0.0.1:${INTAKE_PORT}"
				DD_DOGSTATSD_STATS_ENABLE=true)
		fi
		if [[ -n ${DYNOSTAT_MEMORY_LIMIT} ]]; then
			intake+=("DYNOSTAT_MEMORY_LIMIT=${DYNOSTAT_MEMORY_LIMIT}")
		fi
		printf '%s\n' env -i "PATH=${PATH}" "DD_DOGSTATSD_PORT=${port}" "${intake[@]}" \
			"DYNOSTAT_FLUSH_INTERVAL=${FLUSH}" DD_LOG_LEVEL=info "${DYNOSTAT_BIN}" serve
		;;
	statsdproxy)
		cat >"${RUN}/statsdproxy.yaml" <<EOF
middlewares:
  - type: aggregate-metrics
    flush_interval: $((FLUSH * 1000))
EOF
		printf '%s\n' env RUST_LOG=error "${STATSDPROXY}" --listen "127.0.0.1:${port}" \
			--upstream "127.0.0.1:$((port + 1))" -c "${RUN}/statsdproxy.yaml"
		;;
	etsy)
		cat >"${RUN}/etsy-${port}.js" <<EOF
{ port: ${port}, address: "127.0.0.1", mgmt_address: "127.0.0.1", mgmt_port: $((port + 1)),
  flushInterval: $((FLUSH * 1000)), backends: [] }
EOF
		printf '%s\n' node "${ETSY}" "${RUN}/etsy-${port}.js"
		;;
	esac
}

start_server() {
	local name=${1} port cmd
	port=$(port_of "${name}" 0)
	udp_bound "${port}" && die "UDP port ${port} is already in use; set BENCH_PORT_BASE"
	if [[ ${name} == statsdproxy ]]; then
		"${LOADGEN}" sink --port $((port + 1)) --seconds 3600 >"${RUN}/sink.out" 2>&1 &
		STARTED+=(${!})
		PID[sink]=${!}
	fi
	mapfile -t cmd < <(server_cmd "${name}" "${port}")
	echo "server ${name}: ${cmd[*]}" >>"${RUN}/commands.txt"
	"${cmd[@]}" >>"${RUN}/${name}.out" 2>>"${RUN}/${name}.err" &
	STARTED+=(${!})
	PID[${name}]=${!}
	PORT[${name}]=${port}
	wait_bound "${port}" "${name}"
}

stop_server() {
	stop_pid "${PID[${1}]}"
	if [[ ${1} == statsdproxy && -n ${PID[sink]:-} ]]; then
		stop_pid "${PID[sink]}"
		PID[sink]=
	fi
	for _ in $(seq 1 100); do
		udp_bound "${PORT[${1}]}" || return 0
		sleep 0.05
	done
}

# Stops receivers $@ (dynostat flushes what it holds on SIGTERM) and starts
# them again, empty.
fresh_receivers() {
	local s
	for s in "${@}"; do stop_server "${s}"; done
	for s in "${@}"; do start_server "${s}"; done
	sleep 1
}

hwm_field() { awk '/^VmHWM:/ { printf "\"hwm_kib\":%d", $2 }' "/proc/${1}/status"; }

# VmRSS, RssAnon and RssFile of pid $1 as JSON fields (KiB).
rss_fields() {
	awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 }
		END { printf "\"rss_kib\":%d,\"rss_anon_kib\":%d,\"rss_file_kib\":%d", r, a, f }' \
		"/proc/${1}/status"
}

record() { # json fields to add ..., then the loadgen output on stdin
	python3 -c '
import json, sys
extra = dict(a.split("=", 1) for a in sys.argv[1:])
for line in sys.stdin:
    line = line.strip()
    if line:
        d = json.loads(line)
        d.update(extra)
        print(json.dumps(d))
' "${@}" >>"${RESULTS}"
}

load() { # server, phase, round, loadgen options...
	local name=${1} phase=${2} round=${3}
	shift 3
	log "${name}: ${phase} round ${round} (${*})"
	echo "load ${name} ${phase}: loadgen send --json --port ${PORT[${name}]} --server-pid PID ${*}" >>"${RUN}/commands.txt"
	"${LOADGEN}" send --json --port "${PORT[${name}]}" --server-pid "${PID[${name}]}" \
		--label "${name}" "${@}" | record "server=${name}" "phase=${phase}" "round=${round}"
}

# --- phases ------------------------------------------------------------------------
main() {
	build
	install_peers
	local servers s r
	read -r -a servers <<<"dynostat ${PEERS}"
	# The floor takes the CPU and drop phases only: it keeps no state.
	local receivers=(floor "${servers[@]}")
	log "servers: ${servers[*]} (and the floor receiver); results in ${RUN}"

	# Machine and versions, for the report.
	{
		echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "nproc=$(nproc)"
		echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
		echo "kernel=$(uname -r)"
		echo "rmem_max=$(cat /proc/sys/net/core/rmem_max)"
		echo "rmem_default=$(cat /proc/sys/net/core/rmem_default)"
		echo "commit=$(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
		echo "node=$(node --version 2>/dev/null || echo none)"
		echo "rustc=$(rustc --version)"
		echo "flush=${FLUSH}"
		echo "cpu_rate=${CPU_RATE}"
		echo "cpu_lines=${CPU_LINES}"
		echo "long_rate=${LONG_RATE}"
		echo "long_lines=${LONG_LINES}"
		echo "counters_rate=${COUNTERS_RATE}"
		echo "counters_lines=${COUNTERS_LINES}"
		echo "fast_rate=${FAST_RATE}"
		echo "fast_lines=${FAST_LINES}"
		echo "ctx=${CTX}"
		echo "dynostat_memory_limit=${DYNOSTAT_MEMORY_LIMIT:-default}"
		echo "rounds=${ROUNDS}"
		echo "settle_ms=${SETTLE_MS}"
		echo "statsdproxy_version=${STATSDPROXY_VERSION}"
		echo "etsy_version=${ETSY_VERSION}"
		local bin_size stripped
		bin_size=$(stat -c %s "${DYNOSTAT_BIN}")
		cp "${DYNOSTAT_BIN}" "${RUN}/dynostat.stripped"
		strip -s "${RUN}/dynostat.stripped" 2>/dev/null || true
		stripped=$(stat -c %s "${RUN}/dynostat.stripped")
		echo "dynostat_size=${bin_size}"
		echo "dynostat_size_stripped=${stripped}"
		[[ -x ${STATSDPROXY} ]] && echo "statsdproxy_size=$(stat -c %s "${STATSDPROXY}")"
	} >"${RUN}/meta.env"

	# 0. The stand-in intake for dynostat's forwarding.
	INTAKE_PORT=$((PORT_BASE + 5))
	if [[ ${DYNOSTAT_OUTPUT} == intake ]]; then
		python3 "${ROOT}/scripts/bench/intake.py" "${INTAKE_PORT}" "${RUN}/intake.json" 3600 \
			>"${RUN}/intake.err" 2>&1 &
		STARTED+=($!)
		local _
		for _ in $(seq 1 100); do
			(exec 3<>"/dev/tcp/127.0.0.1/${INTAKE_PORT}") 2>/dev/null && break
			sleep 0.05
		done
	fi

	# 1. Start every server and the floor; idle RSS after 2 s.
	for s in "${receivers[@]}"; do start_server "${s}"; done
	sleep 2
	for s in "${servers[@]}"; do
		echo "{\"server\":\"${s}\",\"phase\":\"idle\",$(rss_fields "${PID[${s}]}")}" >>"${RESULTS}"
	done

	# 2. CPU per million lines received, one load at a time (mixed, long
	#    lines, counters only), the floor and the servers alternating within
	#    each round. Each load after the first starts on fresh receivers, so
	#    it does not pay for what an earlier load left behind (dynostat
	#    zero-fills a stopped counter for 300 s, as the Agent does: the long
	#    load's 1,750 long-tag counters would be encoded at every flush of the
	#    next two loads).
	local phase shape rate lines first=1
	for spec in "cpu mixed ${CPU_RATE} ${CPU_LINES}" \
		"cpu_long long ${LONG_RATE} ${LONG_LINES}" \
		"cpu_counters counters ${COUNTERS_RATE} ${COUNTERS_LINES}"; do
		read -r phase shape rate lines <<<"${spec}"
		[[ ${first} == 1 ]] || fresh_receivers "${receivers[@]}"
		first=0
		for r in $(seq 1 "${ROUNDS}"); do
			for s in "${receivers[@]}"; do
				local settle=${SETTLE_MS}
				[[ ${s} == floor ]] && settle=300
				load "${s}" "${phase}" "${r}" --shape "${shape}" --rate "${rate}" --lines "${lines}" \
					--settle-ms "${settle}"
			done
		done
	done

	# 3. One sender at ~1M lines/s, on fresh receivers: drops.
	fresh_receivers "${receivers[@]}"
	for s in "${receivers[@]}"; do
		load "${s}" fast 1 --rate "${FAST_RATE}" --lines "${FAST_LINES}"
	done

	# 4. Stop (dynostat flushes on SIGTERM), then count what dynostat says it
	#    received: its console summary line per flush counts the lines,
	#    `dynostat: N packets, N lines, N parse errors, N contexts`.
	for s in "${receivers[@]}"; do stop_server "${s}"; done
	python3 - "${RUN}/dynostat.out" "${FLUSH}" "${RUN}/intake.json" >>"${RESULTS}" <<'EOF'
import json, os, sys
total = 0.0
rows = 0
if os.path.exists(sys.argv[3]):
    s = json.load(open(sys.argv[3]))
    print(json.dumps({"server": "dynostat", "phase": "telemetry", "source": "intake",
                      "lines": round(s["lines"]), "rows": s["requests"],
                      "intake_bytes": s["bytes"], "series_points": s["series_points"]}))
    sys.exit(0)
for line in open(sys.argv[1], errors="replace"):
    if not line.startswith("dynostat: "):
        continue
    for part in line[len("dynostat: "):].split(","):
        f = part.split()
        if len(f) == 2 and f[1] in ("line", "lines"):
            try:
                total += float(f[0])
                rows += 1
            except ValueError:
                pass
print(json.dumps({"server": "dynostat", "phase": "telemetry", "source": "console",
                  "lines": round(total), "rows": rows}))
EOF

	# 5. Fresh servers: RSS with CTX live contexts (each context sent 3 times,
	#    starting just after a wall-clock flush boundary, where dynostat
	#    flushes, so the load lands within one interval); then the peak
	#    (VmHWM) and RSS after the next flush has encoded them all.
	for s in "${servers[@]}"; do
		start_server "${s}"
		python3 -c 'import sys, time; f = float(sys.argv[1]); time.sleep(f - time.time() % f + 0.3)' "${FLUSH}"
		load "${s}" contexts 1 --contexts "${CTX}" --lines $((CTX * 3)) --rate 100000
		sleep $((FLUSH + 2))
		echo "{\"server\":\"${s}\",\"phase\":\"contexts_flushed\",$(rss_fields "${PID[${s}]}"),$(hwm_field "${PID[${s}]}")}" >>"${RESULTS}"
		stop_server "${s}"
	done

	# 6. Startup: exec to port bound (and to "listening" on stderr for dynostat).
	for s in "${servers[@]}"; do
		local port cmd ready=port
		port=$(port_of "${s}" 30)
		[[ ${s} == dynostat ]] && ready=both
		if [[ ${s} == statsdproxy ]]; then
			"${LOADGEN}" sink --port $((port + 1)) --seconds 600 >/dev/null 2>&1 &
			STARTED+=(${!})
			PID[sink]=${!}
		fi
		mapfile -t cmd < <(server_cmd "${s}" "${port}")
		# A leading `env [-i] K=V...` becomes loadgen's own --env-clear and
		# --env, so the exec timed is the server's, not /usr/bin/env's (about
		# 1.2 ms on this class of machine) followed by the server's.
		local envargs=()
		if [[ ${cmd[0]} == env ]]; then
			cmd=("${cmd[@]:1}")
			if [[ ${cmd[0]} == -i ]]; then
				envargs+=(--env-clear)
				cmd=("${cmd[@]:1}")
			fi
			while [[ ${cmd[0]} == *=* ]]; do
				envargs+=(--env "${cmd[0]}")
				cmd=("${cmd[@]:1}")
			done
		fi
		log "${s}: startup x${STARTUP_RUNS}"
		echo "startup ${s}: loadgen startup --json --port ${port} --runs ${STARTUP_RUNS} --ready ${ready} ${envargs[*]} -- ${cmd[*]}" >>"${RUN}/commands.txt"
		"${LOADGEN}" startup --json --port "${port}" --runs "${STARTUP_RUNS}" --ready "${ready}" \
			"${envargs[@]}" -- "${cmd[@]}" | record "server=${s}" "phase=startup" "round=1"
		[[ -n ${PID[sink]:-} ]] && stop_pid "${PID[sink]}" && PID[sink]=
	done

	python3 "${ROOT}/scripts/bench/report.py" "${RUN}"
}

main "${@}"
