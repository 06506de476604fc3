#!/usr/bin/env bash
# Usage: scripts/release-build.sh [--target TRIPLE] [--out DIR]
#
# Builds the statically linked release binary and lays it out as the release
# artifact that bin/compile downloads:
#
#   DIR/dynostat-<arch>          the binary (<arch> as `uname -m` prints it: x86_64, aarch64)
#   DIR/dynostat-<arch>.sha256   its checksum, in `sha256sum` format
#
# DIR defaults to dist/. TRIPLE defaults to <host arch>-unknown-linux-gnu.
#
# Static linking uses glibc's crt-static (the musl target is not always
# installable). RUSTFLAGS reach only the target crates because --target is
# always passed explicitly: build scripts and proc-macros are built for the
# host without the flag, as they must be. CARGO_TARGET_DIR and the usual
# CARGO_PROFILE_RELEASE_* variables are honoured (the tests use them to
# build faster without LTO).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/output.sh
source "${repo}/lib/output.sh"

target=""
out="${repo}/dist"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--target)
		target="${2:?--target needs a value, e.g. x86_64-unknown-linux-gnu}"
		shift 2
		;;
	--out)
		out="${2:?--out needs a directory}"
		shift 2
		;;
	-h | --help)
		sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "release-build.sh: unknown argument '$1'; see --help" >&2
		exit 2
		;;
	esac
done

if [[ -z "${target}" ]]; then
	case "$(uname -m)" in
	x86_64 | amd64) target="x86_64-unknown-linux-gnu" ;;
	aarch64 | arm64) target="aarch64-unknown-linux-gnu" ;;
	*)
		echo "release-build.sh: no default target for $(uname -m); pass --target" >&2
		exit 2
		;;
	esac
fi
arch="${target%%-*}"
name="dynostat-${arch}"
target_dir="${CARGO_TARGET_DIR:-${repo}/target}"
built="${target_dir}/${target}/release/dynostat"

output::step "Building ${name} (${target}, static)"
(
	cd "${repo}"
	RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
		cargo build --release --locked --target "${target}" -p dynostat --bin dynostat
) 2>&1 | output::indent

if command -v file >/dev/null 2>&1; then
	description="$(file -b "${built}")"
	case "${description}" in
	*"statically linked"* | *"static-pie linked"*) ;;
	*)
		output::error <<-EOT
			${built} is not statically linked:
			  ${description}
			It would fail on Heroku stacks whose glibc differs from this machine's.
			  1. Check that RUSTFLAGS reaches the build (this script adds -C target-feature=+crt-static).
			  2. Check that no dependency links a C library dynamically (openssl, libz): use rustls and pure-Rust crates.
		EOT
		exit 1
		;;
	esac
fi

mkdir -p "${out}"
# Write next to the destination, then rename: a reader never sees half a file.
cp "${built}" "${out}/.${name}.tmp"
chmod 755 "${out}/.${name}.tmp"
mv -f "${out}/.${name}.tmp" "${out}/${name}"
(cd "${out}" && sha256sum "${name}" >".${name}.sha256.tmp" && mv -f ".${name}.sha256.tmp" "${name}.sha256")

output::step "Wrote ${out}/${name}"
output::info "$(output::human_size "$(stat -c %s "${out}/${name}")"), sha256 $(cut -d' ' -f1 "${out}/${name}.sha256")"
if [[ -n "${description:-}" ]]; then
	output::info "${description}"
fi
