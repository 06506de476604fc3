# shellcheck shell=bash
# Usage: sourced by the dyno's login bash, from $HOME/.profile.d/dynostat.sh
#
# The dynostat boot script. bin/compile installs it into the slug; Heroku's
# login bash sources it at every dyno boot (web, worker, one-off run.N,
# release, scheduler), with the config vars set, and then runs the dyno's
# command in the same shell. It:
#
#   - exports DD_DOGSTATSD_PORT (8125) and DD_AGENT_HOST (127.0.0.1) unless
#     they are set, so DogStatsD clients find the listener, and
#     DD_TRACE_AGENT_PORT (DD_APM_RECEIVER_PORT, 8126) unless set or
#     DD_APM_ENABLED=false, so tracers find the trace relay; and puts
#     $HOME/.dynostat/bin on the PATH;
#   - starts `dynostat agent` in the background, stdin from /dev/null, and
#     returns at once. The agent checks the same settings again, supervises
#     `dynostat serve`, and exits quietly if a listener already owns the port;
#   - honours DISABLE_DATADOG_AGENT and DYNOSTAT_DYNO_TYPES, and without
#     DD_API_KEY prints one hint and starts nothing;
#   - prints nothing in one-off dynos (DYNO=run.N), where people type.
#
# It must never: exit, set or unset shell options, read stdin, block, write a
# file, or leave anything defined but the variables above.

__dynostat_boot() {
	local home="${HOME:-/app}" dyno="${DYNO:-}" type rest inst dep quiet="" wanted list apm
	local bin="${home}/.dynostat/bin/dynostat"

	case ":${PATH:-}:" in
	*":${home}/.dynostat/bin:"*) ;;
	*) export PATH="${PATH:+${PATH}:}${home}/.dynostat/bin" ;;
	esac

	# Started already, by this shell or by the shell that started this one.
	# (The agent's own check of the port is the real guarantee of one agent.)
	if [ -n "${DYNOSTAT_AGENT_PID:-}" ] && kill -0 "${DYNOSTAT_AGENT_PID}" 2>/dev/null; then
		return 0
	fi

	# The dyno type, as the agent computes it: Cedar web.1 -> web,
	# Fir web-12a34b56d-e78f9 -> web.
	type="${dyno}"
	case "${dyno}" in
	*.*) type="${dyno%.*}" ;;
	*-*-*)
		inst="${dyno##*-}"
		rest="${dyno%-*}"
		dep="${rest##*-}"
		case "${inst}:${dep}" in
		:* | *: | *[!A-Za-z0-9:]*) ;;
		*) [ -n "${rest%-*}" ] && type="${rest%-*}" ;;
		esac
		;;
	esac
	[ "${type}" = "run" ] && quiet=1

	if [ -n "${DISABLE_DATADOG_AGENT:-}" ]; then
		[ -n "${quiet}" ] || echo "dynostat: DISABLE_DATADOG_AGENT is set; not starting the agent." >&2
		return 0
	fi

	export DD_DOGSTATSD_PORT="${DD_DOGSTATSD_PORT:-8125}"
	export DD_AGENT_HOST="${DD_AGENT_HOST:-127.0.0.1}"
	# As dynostat reads them: any case, empty is false; port 0 is no TCP.
	apm="${DD_APM_ENABLED-true}"
	apm="${apm//[[:space:]]/}"
	case "${apm,,}" in
	false | 0 | no | off | "") ;;
	*)
		if [ "${DD_APM_RECEIVER_PORT:-8126}" != 0 ]; then
			export DD_TRACE_AGENT_PORT="${DD_TRACE_AGENT_PORT:-${DD_APM_RECEIVER_PORT:-8126}}"
		fi
		;;
	esac

	# DYNOSTAT_DYNO_TYPES: types separated by commas or spaces; all (the
	# default, or an empty list) means every type.
	wanted="${DYNOSTAT_DYNO_TYPES:-all}"
	list=",${wanted//[[:space:]]/,},"
	case "${list}" in
	*[!,]*) ;;
	*) list=",all," ;;
	esac
	case "${list}" in
	*,all,* | *",${type},"*) ;;
	*)
		[ -n "${quiet}" ] || echo "dynostat: not starting the agent on ${dyno:-this dyno} (DYNOSTAT_DYNO_TYPES=${wanted})." >&2
		return 0
		;;
	esac

	if [ -z "${DD_API_KEY:-}" ]; then
		[ -n "${quiet}" ] || echo "dynostat: DD_API_KEY is not set, so no metrics are sent; set it with: heroku config:set DD_API_KEY=<your Datadog API key>" >&2
		return 0
	fi

	if [ ! -x "${bin}" ]; then
		[ -n "${quiet}" ] || echo "dynostat: ${bin} is missing; the dynostat buildpack did not run for this slug (check heroku buildpacks, then redeploy)." >&2
		return 0
	fi

	# In one-off dynos the agent logs only warnings and errors, unless
	# DD_LOG_LEVEL says otherwise.
	if [ -n "${quiet}" ] && [ -z "${DD_LOG_LEVEL:-}" ]; then
		DD_LOG_LEVEL=warn "${bin}" agent </dev/null &
	else
		"${bin}" agent </dev/null &
	fi
	export DYNOSTAT_AGENT_PID="$!"
	# Out of the job table: no "Done" notice, no SIGHUP from an interactive shell.
	disown "${DYNOSTAT_AGENT_PID}" 2>/dev/null || :
	return 0
}

__dynostat_boot
unset -f __dynostat_boot
