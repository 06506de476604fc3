#!/usr/bin/env bash
# Getting the dynostat binary into a build: where it comes from, checking its
# sha256, and caching it. Shared by the classic bin/compile and the CNB
# bin/build, so every function takes what it needs as arguments and reads no
# buildpack-API globals (BUILD_DIR, CACHE_DIR, ENV_DIR, STACK, CNB_*).
#
#   binary::buildpack_version <buildpack-dir>     the version in Cargo.toml's [package]
#   binary::arch                                  x86_64 or aarch64, from uname -m
#   binary::default_url <version> <arch>          the GitHub release asset URL
#   binary::config_value <env-dir> <NAME>         a config var from ENV_DIR, else the environment
#   binary::expected_sha256 <url> <override> <work-dir>
#   binary::cache_key <version> <arch> <stack> <sha256>
#   binary::obtain <url> <sha256> <cache-dir> <cache-key> <out-file>
#   binary::prune_cache <cache-dir> <cache-key>
#
# Failures print a Heroku error block (lib/output.sh) and return 1; nothing
# here exits or installs anything. Requires lib/output.sh to be sourced.

# The GitHub repository whose releases hold the binaries. .github/workflows/release.yml
# uploads `dynostat-<arch>` and `dynostat-<arch>.sha256` to the release of tag v<version>.
DYNOSTAT_RELEASE_REPO_DEFAULT="dynostat/dynostat"

# Prints the buildpack's version: the `version` of the [package] section of
# <buildpack-dir>/Cargo.toml, which the release tag v<version> matches.
binary::buildpack_version() {
	local dir="$1" version
	version="$(awk '
		/^\[/ { in_package = ($0 == "[package]"); next }
		in_package && /^version[[:space:]]*=/ {
			sub(/^version[[:space:]]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
		}' "${dir}/Cargo.toml" 2>/dev/null)"
	if [[ -z "${version}" ]]; then
		output::error <<-EOT
			Could not read the buildpack's version from ${dir}/Cargo.toml.
			The buildpack checkout looks incomplete.
			  1. Use the buildpack from a release tag: heroku buildpacks:add https://github.com/${DYNOSTAT_RELEASE_REPO_DEFAULT}#v<version>
			  2. Or set DYNOSTAT_BINARY_URL and DYNOSTAT_BINARY_SHA256 to a binary of your own.
		EOT
		return 1
	fi
	printf '%s\n' "${version}"
}

# Prints the release architecture name for this machine (as uname -m names it
# on Heroku's stacks): x86_64 or aarch64.
binary::arch() {
	local machine
	machine="$(uname -m)"
	case "${machine}" in
	x86_64 | amd64) echo "x86_64" ;;
	aarch64 | arm64) echo "aarch64" ;;
	*)
		output::error <<-EOT
			dynostat has no release binary for this machine's architecture (${machine}).
			Releases exist for x86_64 and aarch64.
			  1. Build one yourself with scripts/release-build.sh --target <triple>.
			  2. Then set DYNOSTAT_BINARY_URL and DYNOSTAT_BINARY_SHA256 to point at it.
		EOT
		return 1
		;;
	esac
}

# Prints the default download URL of the release binary.
binary::default_url() {
	local version="$1" arch="$2"
	printf 'https://github.com/%s/releases/download/v%s/dynostat-%s\n' \
		"${DYNOSTAT_RELEASE_REPO_DEFAULT}" "${version}" "${arch}"
}

# Prints the value of config var <NAME>: the content of <env-dir>/<NAME> if that
# file exists (a config var set with heroku config:set), else the environment's
# value, else nothing. Only the one variable asked for is read; nothing is exported.
binary::config_value() {
	local env_dir="$1" name="$2"
	if [[ -n "${env_dir}" && -f "${env_dir}/${name}" ]]; then
		# $(...) drops the trailing newline a config var file may carry.
		printf '%s\n' "$(cat "${env_dir}/${name}")"
	else
		printf '%s\n' "${!name:-}"
	fi
}

# Copies or downloads <url> to <dest>. <url> may be https:// or http:// (with
# curl, retried), file:///abs/path, or a plain path. Returns 1 with an error
# block if that fails; <dest> is then absent.
binary::fetch() {
	local url="$1" dest="$2" path
	rm -f "${dest}"
	case "${url}" in
	http://* | https://*)
		if ! command -v curl >/dev/null 2>&1; then
			output::error <<-EOT
				curl is needed to download ${url}, and it is not installed.
				  1. Use a stack image that has curl (every Heroku stack does).
				  2. Or point DYNOSTAT_BINARY_URL at a local file (file:///path or /path).
			EOT
			return 1
		fi
		if ! curl --fail --silent --show-error --location --retry 3 --retry-connrefused \
			--connect-timeout 10 --max-time 300 --output "${dest}" "${url}" 2>"${dest}.err"; then
			output::error <<-EOT
				Could not download ${url}
				  $(tr -d '\r' <"${dest}.err" | head -n 3)
				  1. Check that a release exists for this version and architecture.
				  2. If you set DYNOSTAT_BINARY_URL, check that it is right and reachable.
				  3. If GitHub is having trouble, retry the build later.
			EOT
			rm -f "${dest}" "${dest}.err"
			return 1
		fi
		rm -f "${dest}.err"
		return 0
		;;
	file://*) path="${url#file://}" ;;
	*) path="${url}" ;;
	esac
	if [[ ! -f "${path}" ]]; then
		output::error <<-EOT
			${path}: no such file.
			  1. If you set DYNOSTAT_BINARY_URL, check the path (file:///abs/path or /abs/path).
			  2. Build the artifact first: scripts/release-build.sh --out <dir>.
		EOT
		return 1
	fi
	cp "${path}" "${dest}"
}

# Prints the sha256 of a file (64 lowercase hex digits).
binary::sha256_of() {
	local out
	out="$(sha256sum "$1")" || return 1
	printf '%s\n' "${out%% *}"
}

# Prints the sha256 the binary at <url> must have: <override> when not empty
# (DYNOSTAT_BINARY_SHA256), else the first field of <url>.sha256. <work-dir> is
# a scratch directory. Returns 1 with an error block when neither gives a
# well-formed checksum: an unverified binary is never installed.
binary::expected_sha256() {
	local url="$1" override="$2" work="$3" sum source
	if [[ -n "${override}" ]]; then
		sum="${override}"
		source="DYNOSTAT_BINARY_SHA256"
	else
		source="${url}.sha256"
		if ! binary::fetch "${url}.sha256" "${work}/expected.sha256" 2>"${work}/fetch.err"; then
			output::error <<-EOT
				No checksum for ${url}
				Looked for ${url}.sha256 and found nothing. dynostat never installs a
				binary it cannot verify, so nothing was installed.
				  1. If you set DYNOSTAT_BINARY_URL, put the checksum next to the binary:
				       sha256sum dynostat-<arch> > dynostat-<arch>.sha256
				  2. Or set it explicitly: heroku config:set DYNOSTAT_BINARY_SHA256=<64 hex digits>
				  3. If you use a release, check that it has a dynostat-<arch>.sha256 asset.
			EOT
			return 1
		fi
		read -r sum _ <"${work}/expected.sha256" || true
	fi
	sum="$(printf '%s' "${sum}" | tr 'A-F' 'a-f')"
	if [[ ! "${sum}" =~ ^[0-9a-f]{64}$ ]]; then
		output::error <<-EOT
			The checksum from ${source} is not a sha256 (64 hex digits):
			  '$(printf '%.80s' "${sum}")'
			Nothing was installed.
			  1. Check DYNOSTAT_BINARY_SHA256, or the .sha256 file (sha256sum format: '<hex>  <name>').
			  2. To use the release's own checksum, unset it: heroku config:unset DYNOSTAT_BINARY_SHA256
		EOT
		return 1
	fi
	printf '%s\n' "${sum}"
}

# Prints the cache key of a binary: everything that must match for a cached
# copy to be reused. A new version, stack or checksum misses the cache.
binary::cache_key() {
	local version="$1" arch="$2" stack="$3" sum="$4"
	printf 'v%s-%s-%s-%s\n' "${version}" "${arch}" "${stack:-nostack}" "${sum}"
}

# Puts a verified copy of the binary at <out-file> (mode 755). It uses
# <cache-dir>/<cache-key>/dynostat when that exists and still matches <sha256>
# (and says so), else it fetches <url>, checks the sha256 BEFORE anything else
# sees the file, and stores it in the cache. <cache-dir> may be empty: no cache.
# Prints detail lines. On failure: an error block, return 1, <out-file> absent.
binary::obtain() {
	local url="$1" sum="$2" cache_dir="$3" key="$4" out="$5"
	local cached="" got
	rm -f "${out}"
	if [[ -n "${cache_dir}" ]]; then
		cached="${cache_dir}/${key}/dynostat"
		if [[ -f "${cached}" ]]; then
			got="$(binary::sha256_of "${cached}")" || got=""
			if [[ "${got}" == "${sum}" ]]; then
				cp "${cached}" "${out}"
				chmod 755 "${out}"
				output::info "Using the cached binary (sha256 ${sum:0:12}…, from an earlier build)"
				return 0
			fi
			output::info "The cached binary no longer matches its checksum; downloading it again"
			rm -rf "${cache_dir:?}/${key}"
		fi
	fi

	case "${url}" in
	http://* | https://*) output::info "Downloading ${url}" ;;
	*) output::info "Copying ${url}" ;;
	esac
	binary::fetch "${url}" "${out}.download" || return 1
	got="$(binary::sha256_of "${out}.download")" || got="(unreadable)"
	if [[ "${got}" != "${sum}" ]]; then
		rm -f "${out}.download"
		output::error <<-EOT
			Checksum mismatch: the binary from
			  ${url}
			is not the one expected, so nothing was installed.
			  expected sha256 ${sum}
			  got      sha256 ${got}
			  1. Retry the build: a download may have been cut short or altered on the way.
			  2. If you set DYNOSTAT_BINARY_SHA256, check that it is the checksum of this binary.
			  3. If you set DYNOSTAT_BINARY_URL, check that it points at the binary itself,
			     not at an HTML page or another version.
		EOT
		return 1
	fi
	chmod 755 "${out}.download"
	mv -f "${out}.download" "${out}"
	output::info "Verified sha256 ${sum}"

	if [[ -n "${cached}" ]]; then
		# A failed cache write costs only the next build's download.
		if mkdir -p "${cache_dir}/${key}" && cp "${out}" "${cached}.tmp" && mv -f "${cached}.tmp" "${cached}"; then
			:
		else
			output::info "(could not write the cache in ${cache_dir}; the next build downloads again)"
		fi
	fi
}

# Removes every cached binary except <cache-key>, so the cache holds one
# binary (an old version or another stack's is never reused).
binary::prune_cache() {
	local cache_dir="$1" key="$2" entry
	[[ -d "${cache_dir}" ]] || return 0
	for entry in "${cache_dir}"/*; do
		[[ -e "${entry}" ]] || continue
		[[ "${entry##*/}" == "${key}" ]] && continue
		rm -rf "${entry}"
	done
}
