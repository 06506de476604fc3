#!/usr/bin/env bash
# Usage: tests/buildpack/dyno.sh <slug-dir> <command>
#
# Boots <slug-dir> the way Heroku boots a dyno, locally, for tests/buildpack.rs:
#
#   - private mount and PID namespaces (`unshare -rm --pid --fork --mount-proc`;
#     as root without a user namespace when those are not allowed);
#   - every filesystem read-only except <slug-dir> (which becomes $HOME, as
#     /app is on Heroku), a fresh tmpfs on /tmp, and /dev, /proc, /sys;
#   - with DYNO_FAKE_CGROUP=<dir>, a tmpfs on /sys/fs/cgroup holding a copy
#     of <dir> (fake cgroup files for the dyno metrics tests), read-only too;
#   - `bash --login -c` that sources $HOME/.profile.d/*.sh, then runs <command>
#     in the same shell, stdin from /dev/null, with the caller's environment
#     (DYNO, PORT, HEROKU_APP_NAME, DD_* ...) and HOME=<slug-dir>.
#
# This script is the dyno manager (PID 1 in the namespace). It stops the dyno
# as Heroku does, SIGTERM to every process at once, when a line `stop` (or
# end of file) arrives on its stdin, or when <command> exits; then it waits
# up to DYNO_STOP_TIMEOUT seconds (30) for every process to exit, and kills
# what is left.
#
# Its own lines go to stderr and start with "dyno: ":
#   dyno: root is read-only
#   dyno: booted pid N
#   dyno: command exited with status S           (when it ends by itself)
#   dyno: stopping: SIGTERM to N processes: ...
#   dyno: all processes exited after 0.8 s
#   dyno: still running after 30 s: ...           (then exit status 1)
# Exit status: 0 when everything exited in time, 1 when something had to be
# killed, 3 when the namespaces or mounts cannot be set up.
set -euo pipefail

say() { printf 'dyno: %s\n' "$*" >&2; }

# Fills the array `running` with "pid cmdline" for every live process in this
# PID namespace but the manager. Builtins only: a forked helper would list itself.
processes() {
	local dir pid stat state args
	running=()
	for dir in /proc/[0-9]*; do
		pid="${dir#/proc/}"
		[[ "${pid}" == 1 ]] && continue
		# stat is "pid (comm) state ...", and comm may hold spaces: cut after the last ')'.
		read -r stat 2>/dev/null <"${dir}/stat" || continue
		stat="${stat##*) }"
		state="${stat%% *}"
		[[ "${state}" == Z || "${state}" == X ]] && continue
		args=()
		mapfile -d '' args 2>/dev/null <"${dir}/cmdline" || true
		running+=("${pid} ${args[*]}")
	done
}

if [[ "${1:-}" != "--inside" ]]; then
	slug="$(cd "${1:?Usage: dyno.sh <slug-dir> <command>}" && pwd)"
	command="${2:?Usage: dyno.sh <slug-dir> <command>}"
	if unshare -rm --pid --fork --mount-proc true 2>/dev/null; then
		userns=(-r)
	elif [[ "$(id -u)" == 0 ]] && unshare -m --pid --fork --mount-proc true 2>/dev/null; then
		userns=()
	else
		say "cannot create namespaces: 'unshare -rm --pid --fork --mount-proc true' fails; run scripts/install-test-deps.sh (it says how to allow them)"
		exit 3
	fi
	exec unshare "${userns[@]}" -m --propagation private --pid --fork --mount-proc -- \
		bash "${BASH_SOURCE[0]}" --inside "${slug}" "${command}"
fi

slug="$2"
command="$3"
stop_timeout="${DYNO_STOP_TIMEOUT:-30}"

# A slug under /tmp (a checkout in /tmp, say) would vanish under the dyno's
# fresh tmpfs: bind it first onto a directory outside /tmp, as Heroku's /app.
case "${slug}/" in
/tmp/*)
	for dir in /app /mnt /srv /media /opt; do
		if [[ -d "${dir}" ]] && mount --bind "${slug}" "${dir}"; then
			slug="${dir}"
			break
		fi
	done
	case "${slug}/" in
	/tmp/*)
		say "the slug is under /tmp, which the dyno gets as a fresh tmpfs, and no directory outside /tmp could take it: ${slug}"
		exit 3
		;;
	esac
	;;
esac

# A test's fake cgroup files, written before the root becomes read-only, and
# read-only themselves. (The real cgroup mounts under /sys/fs/cgroup stay in
# mountinfo, hidden below the tmpfs.)
if [[ -n "${DYNO_FAKE_CGROUP:-}" ]]; then
	if ! { mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup &&
		cp -R "${DYNO_FAKE_CGROUP}/." /sys/fs/cgroup/ &&
		mount -o remount,ro /sys/fs/cgroup; }; then
		say "cannot set up the fake cgroup files from ${DYNO_FAKE_CGROUP} on /sys/fs/cgroup"
		exit 3
	fi
	unset DYNO_FAKE_CGROUP
fi

# Heroku's filesystem: the slug ($HOME) and /tmp writable, everything else read-only.
mount --bind "${slug}" "${slug}" || {
	say "cannot bind-mount ${slug}"
	exit 3
}
while read -r _ _ _ _ mountpoint _; do
	case "${mountpoint}" in
	"${slug}" | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;;
	esac
	mount -o remount,ro,bind "${mountpoint}" 2>/dev/null || say "could not make ${mountpoint} read-only"
done </proc/self/mountinfo
# The test's probe helpers, when they live under /tmp too, are carried over
# into the new tmpfs (and left out of the listing of /tmp at the end).
probe_copy=""
if [[ "${DYNO_PROBE:-}" == /tmp/* && -r "${DYNO_PROBE}" ]]; then
	probe_copy="$(<"${DYNO_PROBE}")"
fi
mount -t tmpfs -o mode=1777 tmpfs /tmp || {
	say "cannot mount a tmpfs on /tmp"
	exit 3
}
if [[ -n "${probe_copy}" ]]; then
	printf '%s\n' "${probe_copy}" >/tmp/.dyno-probe.sh
	export DYNO_PROBE=/tmp/.dyno-probe.sh
fi
if (: >/.dyno-write-probe) 2>/dev/null; then
	rm -f /.dyno-write-probe
	say "the root is still writable; refusing to boot"
	exit 3
fi
say "root is read-only; writable: ${slug} (HOME), /tmp"

cd "${slug}"
export HOME="${slug}"
# Heroku's login bash sources the slug's .profile.d scripts, then runs the command in the same shell.
# shellcheck disable=SC2016 # expanded by the dyno's shell, not here
boot='for __profile in "$HOME"/.profile.d/*.sh; do [ -r "$__profile" ] && . "$__profile"; done; unset __profile
'
bash --login -c "${boot}${command}" </dev/null &
dyno_pid=$!
say "booted pid ${dyno_pid}"

# Wait for `stop`, end of input, or the command's own end.
reason="stop requested"
while :; do
	state=gone
	if read -r stat 2>/dev/null <"/proc/${dyno_pid}/stat"; then
		stat="${stat##*) }"
		state="${stat%% *}"
	fi
	if [[ "${state}" == Z || "${state}" == gone ]]; then
		status=0
		wait "${dyno_pid}" || status=$?
		say "command exited with status ${status}"
		reason="the command exited"
		break
	fi
	line=""
	if read -r -t 0.1 line; then
		[[ "${line}" == stop ]] && break
	else
		rc=$?
		if ((rc <= 128)); then
			reason="end of input"
			break
		fi
	fi
done

started="${EPOCHREALTIME}"
processes
say "stopping (${reason}): SIGTERM to ${#running[@]} processes: $(printf '[%s] ' "${running[@]}")"
kill -TERM -1 2>/dev/null || true

deadline=$((${EPOCHREALTIME/./} + stop_timeout * 1000000))
while :; do
	processes
	[[ ${#running[@]} -eq 0 ]] && break
	if ((${EPOCHREALTIME/./} >= deadline)); then
		say "still running after ${stop_timeout} s: $(printf '[%s] ' "${running[@]}")"
		kill -KILL -1 2>/dev/null || true
		exit 1
	fi
	sleep 0.05
done
wait 2>/dev/null || true
elapsed="$(awk -v a="${started}" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }')"
say "all processes exited after ${elapsed} s"
leftovers="$(cd /tmp && find . -mindepth 1 -maxdepth 2 ! -name .dyno-probe.sh | head -n 5 | tr '\n' ' ')"
say "/tmp after shutdown: ${leftovers:-empty}"
exit 0
