#!/usr/bin/env bash
# Heroku-style build output, shared by bin/compile, scripts/release-build.sh and
# (later) the CNB bin/build.
#
#   output::step "Installing dynostat"      -----> Installing dynostat
#   output::info "From https://..."                From https://...
#   cmd | output::indent                     each line indented 7 spaces
#   output::error <<-EOT ... EOT             " !     " on every line, on stderr
#   output::warning <<-EOT ... EOT           same, for problems that do not stop the build
#
# Functions only: sourcing this file defines them and does nothing else (no
# shell options, no globals, no output).

# Prints a top-level build step: "-----> message".
output::step() {
	printf -- '-----> %s\n' "$*"
}

# Prints a detail line under the current step, indented 7 spaces.
output::info() {
	printf -- '       %s\n' "$*"
}

# Indents every line read from stdin by 7 spaces.
output::indent() {
	local line
	while IFS= read -r line || [[ -n "${line}" ]]; do
		printf -- '       %s\n' "${line}"
	done
}

# Prints the message read from stdin (usually a heredoc) as a Heroku error
# block on stderr: a blank line, then " !     " before every line. It does not
# exit: the caller decides (bin/compile exits 1 right after).
output::error() {
	local line
	{
		printf '\n'
		while IFS= read -r line || [[ -n "${line}" ]]; do
			if [[ -n "${line}" ]]; then
				printf -- ' !     %s\n' "${line}"
			else
				printf -- ' !\n'
			fi
		done
		printf '\n'
	} >&2
}

# Like output::error, for problems that do not fail the build.
output::warning() {
	output::error
}

# Prints a byte count for humans: 512 B, 3.9 KB, 4.1 MB (powers of 1024, one decimal).
output::human_size() {
	local bytes="${1:-0}"
	awk -v b="${bytes}" 'BEGIN {
		split("B KB MB GB", unit, " ")
		i = 1
		while (b >= 1024 && i < 4) { b = b / 1024; i++ }
		if (i == 1) printf "%d %s\n", b, unit[i]; else printf "%.1f %s\n", b, unit[i]
	}'
}
