#!/usr/bin/env bash
# Writes the pipeline fuzz target's seed corpus: the malformed and edge lines
# from the parser's tests (src/dogstatsd/protocol.rs, `(b"...", Error)`
# rows), the numeric extremes of issue 22, and a few good lines, one file
# each, into fuzz/corpus/pipeline (or $1).
# Usage, from the repo root: fuzz/seed.sh && cargo +nightly fuzz run pipeline
# -- -timeout=5 -rss_limit_mb=1024
set -euo pipefail
out=${1:-fuzz/corpus/pipeline}
mkdir -p "$out"
i=0
put() {
	printf '%b' "$1" >"$out/seed-$i"
	i=$((i + 1))
}
# The parser's error table: the bytes of each b"..." literal in a row that
# names a ParseError.
while IFS= read -r line; do
	put "$line"
done < <(sed -n 's/^ *(b"\(.*\)", [A-Z][A-Za-z]*),$/\1/p' src/dogstatsd/protocol.rs)
# Numeric extremes: sample rates, values, counts, lengths, timestamps.
for rate in 1e-20 1e-300 5e-324 1e-12 1e-6 0 -1 2 nan inf 0x1p-1074; do
	for type in c d h ms; do
		put "x:1|$type|@$rate"
	done
done
put 'x:1e308:1e308:-1e308:5e-324|d|@1e-6\nx:1e308|c|@1e-6\nx:1e308|h|@1e-6'
put 'x:1|d|@1e-6\x00x:2|d|@1e-6\x00\x00x:3|d'
put "x:$(printf '1:%.0s' $(seq 1 2000))1|d|@0.000001"
put 'x:1|c|T99999999999999999999\nx:1|g|T9223372036854775807\nx:1|c|T1'
put '_e{99999999999999999999,1}:a|b\n_e{1,99999999999999999999}:a|b\n_e{4294967295,4294967295}:a|b'
put "x:1|c|#$(printf 'a%.0s,' $(seq 1 3000))"
put "s:$(printf 'm%.0s:' $(seq 1 2000))|s"
put 'page.views:1|c|#env:prod\nlatency:12.5|ms|@0.5|#route:/a\nd:1:2:3|d|@0.3\nu:alice|s\n_sc|db|0|m:ok'
echo "$i seeds in $out"
