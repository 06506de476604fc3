#!/usr/bin/env bash
# Usage: scripts/install-test-deps.sh
#
# Installs what the buildpack tests (tests/buildpack.rs) need beyond Rust,
# only when it is missing: shellcheck, file, unshare (util-linux) and curl,
# through apt-get; and for the checks' tests (tests/checks.rs), Debian's
# postgresql, redis-server (with redis-cli) and openssl, whose servers the
# tests start themselves (the package's own cluster is not used). Then checks that unprivileged namespaces work for the
# dyno boot test (`unshare -rm --pid --fork --mount-proc`) and, on hosts
# such as Ubuntu 24.04 that restrict them with AppArmor, lifts that
# restriction when run as root (CI machines only; it says so when it does).
#
# Safe to run again: it does nothing when everything is present.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/output.sh
source "${repo}/lib/output.sh"

sudo=""
if [[ "$(id -u)" != 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	fi
fi

# command -> Debian/Ubuntu package
declare -A wanted=(
	[shellcheck]=shellcheck
	[file]=file
	[unshare]=util-linux
	[curl]=curl
	[sha256sum]=coreutils
	[redis-server]=redis-server
	[redis-cli]=redis-tools
	[openssl]=openssl
	[runuser]=util-linux
)
missing=()
for cmd in "${!wanted[@]}"; do
	command -v "${cmd}" >/dev/null 2>&1 || missing+=("${wanted[${cmd}]}")
done
# initdb and pg_ctl live in /usr/lib/postgresql/<version>/bin, off PATH.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [[ ${#missing[@]} -gt 0 ]]; then
	output::step "Installing test dependencies: ${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
		output::error <<-EOT
			apt-get is not available, so ${missing[*]} cannot be installed here.
			  1. Install them with this system's package manager.
			  2. Then run the tests again: cargo test --test buildpack
		EOT
		exit 1
	fi
	if [[ "$(id -u)" != 0 && -z "${sudo}" ]]; then
		output::error <<-EOT
			Installing ${missing[*]} needs root, and sudo is not available.
			  1. Run this script as root, or install them yourself: apt-get install ${missing[*]}
		EOT
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	${sudo} apt-get update -qq 2>&1 | output::indent
	${sudo} apt-get install -y -qq --no-install-recommends "${missing[@]}" 2>&1 | output::indent
else
	output::step "Test dependencies present: ${!wanted[*]}"
fi

output::step "Checking namespaces for the dyno boot test"
if unshare -rm --pid --fork --mount-proc true 2>/dev/null; then
	output::info "unshare -rm --pid --fork --mount-proc works"
else
	knob=/proc/sys/kernel/apparmor_restrict_unprivileged_userns
	if [[ -r "${knob}" && "$(cat "${knob}")" == 1 ]] && { [[ "$(id -u)" == 0 ]] || [[ -n "${sudo}" ]]; }; then
		output::info "AppArmor restricts unprivileged user namespaces; lifting it for the tests:"
		output::info "  sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
		${sudo} sysctl -qw kernel.apparmor_restrict_unprivileged_userns=0
	fi
	if unshare -rm --pid --fork --mount-proc true 2>/dev/null; then
		output::info "unshare -rm --pid --fork --mount-proc works"
	elif [[ "$(id -u)" == 0 ]] && unshare -m --pid --fork --mount-proc true 2>/dev/null; then
		output::info "unshare works as root without a user namespace; the tests fall back to that"
	else
		output::error <<-EOT
			This machine does not allow the namespaces the dyno boot test needs:
			  unshare -rm --pid --fork --mount-proc true   fails.
			  1. Allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1
			     (or kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04).
			  2. Or run the tests as root.
		EOT
		exit 1
	fi
fi

# Real tracers for the trace relay's tests (tests/trace.rs), each in its own
# directory under target/tracers/ (never installed globally): Python ddtrace,
# the newest 4.x and an older major (2.x), in separate virtualenvs; Node
# dd-trace 6 and 5 through npm. Skipped (with a note) when python3 or npm is
# missing; each is installed only once. DYNOSTAT_SKIP_TRACERS=1 skips them.
tracers="${repo}/target/tracers"
if [[ -n "${DYNOSTAT_SKIP_TRACERS:-}" ]]; then
	output::step "Skipping the tracers (DYNOSTAT_SKIP_TRACERS is set)"
else
	output::step "Installing tracers for the trace relay tests into ${tracers}"
	mkdir -p "${tracers}"
	if command -v python3 >/dev/null 2>&1; then
		for spec in "py4:ddtrace>=4,<5" "py2:ddtrace>=2.21,<3"; do
			dir="${tracers}/${spec%%:*}"
			if [[ -x "${dir}/bin/python" ]] && "${dir}/bin/python" -c 'import ddtrace' 2>/dev/null; then
				output::info "${spec#*:}: present ($("${dir}/bin/python" -c 'import ddtrace; print(ddtrace.__version__)'))"
				continue
			fi
			python3 -m venv "${dir}"
			"${dir}/bin/pip" install -q --disable-pip-version-check "${spec#*:}" 2>&1 | output::indent
			output::info "${spec#*:}: $("${dir}/bin/python" -c 'import ddtrace; print(ddtrace.__version__)')"
		done
	else
		output::info "python3 not found: the ddtrace tests will be skipped"
	fi
	if command -v npm >/dev/null 2>&1; then
		for major in 6 5; do
			dir="${tracers}/node${major}"
			if [[ -f "${dir}/node_modules/dd-trace/package.json" ]]; then
				output::info "dd-trace@${major}: present"
				continue
			fi
			mkdir -p "${dir}"
			(cd "${dir}" && npm install --silent --no-audit --no-fund "dd-trace@${major}" 2>&1) | output::indent
			output::info "dd-trace@${major}: installed"
		done
	else
		output::info "npm not found: the dd-trace (Node) tests will be skipped"
	fi
fi
