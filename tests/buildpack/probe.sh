# shellcheck shell=bash
# Usage: . tests/buildpack/probe.sh   (inside a test dyno booted by dyno.sh)
#
# Helpers a test dyno's command uses to report what runs in it, for
# tests/buildpack.rs. They use builtins only where they list processes, so
# they never show up in their own listings. Defines functions; does nothing else.

# Prints "proc <pid> <args>" for every live process in the dyno except the
# dyno manager (PID 1) and the calling shell.
probe::processes() {
	local dir pid stat state args
	for dir in /proc/[0-9]*; do
		pid="${dir#/proc/}"
		[[ "${pid}" == 1 || "${pid}" == "$$" || "${pid}" == "${BASHPID}" ]] && continue
		read -r stat 2>/dev/null <"${dir}/stat" || continue
		stat="${stat##*) }"
		state="${stat%% *}"
		[[ "${state}" == Z || "${state}" == X ]] && continue
		args=()
		mapfile -d '' args 2>/dev/null <"${dir}/cmdline" || true
		printf 'proc %s %s\n' "${pid}" "${args[*]}"
	done
}

# Whether process $1 is alive (not gone, not a zombie).
probe::alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat="${stat##*) }"
	[[ "${stat%% *}" != Z && "${stat%% *}" != X ]]
}

# Waits up to $2 seconds until process $1 has exited; returns 1 on timeout.
probe::wait_gone() {
	local deadline=$((SECONDS + $2))
	while probe::alive "$1"; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

# Waits up to $2 seconds until something binds UDP port $1 (as /proc/net/udp
# shows it); returns 1 on timeout.
probe::wait_udp_port() {
	local hex deadline=$((SECONDS + $2)) _sl local_address _rest
	printf -v hex ':%04X' "$1"
	while :; do
		while read -r _sl local_address _rest; do
			[[ "${local_address}" == *"${hex}" ]] && return 0
		done </proc/net/udp
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}
