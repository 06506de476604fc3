#!/usr/bin/env python3
"""Turns one scripts/bench.sh run directory into a markdown report.

In: RUN/meta.env (machine, knobs, sizes), RUN/results.jsonl (one JSON object
per loadgen report or probe, tagged with server and phase), RUN/commands.txt.
Out: markdown on stdout. Never: reads anything outside RUN, or invents a
figure: a missing measurement prints as "n/a".
"""

import json
import statistics
import sys
from pathlib import Path

CPU_PHASES = ("cpu", "cpu_long", "cpu_counters", "fast")
ORDER = ["floor", "dynostat", "statsdproxy", "etsy"]
NAMES = {
    "floor": "floor (recvmmsg, discard)",
    "dynostat": "dynostat",
    "statsdproxy": "statsdproxy (Sentry, Rust)",
    "etsy": "statsd (Etsy, Node.js)",
}


def load(run):
    meta = {}
    for line in (run / "meta.env").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    results = [json.loads(l) for l in (run / "results.jsonl").read_text().splitlines() if l.strip()]
    commands = (run / "commands.txt").read_text() if (run / "commands.txt").exists() else ""
    return meta, results, commands


def fmt(v, digits=3, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def mib(kib):
    return None if kib is None else kib / 1024.0


def ratio(peer, base):
    if peer is None or base is None or base == 0:
        return "n/a"
    return f"{peer / base:.1f}x"


def main():
    run = Path(sys.argv[1])
    meta, results, commands = load(run)
    servers = [s for s in ORDER if any(r.get("server") == s for r in results)]

    def rows(server, phase):
        return [r for r in results if r.get("server") == server and r.get("phase") == phase]

    out = []
    p = out.append
    p(f"# dynostat benchmark, {meta.get('date', '?')}")
    p("")
    p(
        f"Machine: {meta.get('nproc')} cores, {meta.get('cpu')}, Linux {meta.get('kernel')}, "
        f"net.core.rmem_max={meta.get('rmem_max')}, rmem_default={meta.get('rmem_default')}. "
        f"Commit {meta.get('commit')}, {meta.get('rustc')}, node {meta.get('node')}."
    )
    p("")
    p(
        "Loads (examples/loadgen.rs), one sender on 127.0.0.1: **mixed**: counters, gauges, histograms "
        "and sets in turn, 3 tags per line, 1,000 contexts, about 31 lines per datagram of at most 1432 "
        "bytes; **long**: 3,000 contexts, names of 1 to 200 characters, 2 to 50 tags of 3 to 150 "
        "characters, datagrams of at most 8 KiB, types weighted counters 208, gauges 66, distributions "
        "72, sets 9, histograms 1 (the shape of Datadog's SMP \"3k contexts\" DogStatsD cases); "
        "**counters**: the mixed load's counter lines only. "
        f"Flush interval {meta.get('flush')} s for every server. "
        "The floor is `loadgen floor`: the same `recvmmsg` batches into reused buffers as dynostat, "
        "with the same socket buffer, parsing nothing. CPU is the sum of every thread's on-CPU time "
        "from `/proc/PID/task/*/schedstat`, read before the first datagram and after the socket queue "
        "has drained (plus 300 ms; in the CPU rounds, plus the settle given in each table)."
    )
    p("")

    def cpu_table(phase, title, rate_key, lines_key):
        rs_all = [r for r in results if r.get("phase") == phase]
        if not rs_all:
            return
        med = {}
        for s in servers:
            vals = [r["cpu_s_per_m_received"] for r in rows(s, phase) if r.get("cpu_s_per_m_received") is not None]
            med[s] = statistics.median(vals) if vals else None
        lpd = statistics.median([r["lines_per_datagram"] for r in rs_all if r.get("lines_per_datagram")] or [0])
        ctx = rs_all[0].get("contexts")
        p(
            f"## CPU per million lines, {title} ({int(meta.get(rate_key, 0)):,} lines/s, "
            f"{int(meta.get(lines_key, 0)):,} lines a round, {ctx:,} contexts, {lpd:.1f} lines per datagram, "
            f"median of {meta.get('rounds')} rounds, receivers alternating"
            + (f"; each server's CPU counted until {int(meta['settle_ms']):,} ms after its load drained, "
               "so its flush of those lines is in"
               if meta.get("settle_ms") else "")
            + ")"
        )
        p("")
        p("| server | CPU-s per M lines received (median) | min..max | x floor | vs dynostat | lines sent | socket drops | received | RSS after |")
        p("|---|---|---|---|---|---|---|---|---|")
        for s in servers:
            rs = rows(s, phase)
            if not rs:
                continue
            vals = [r["cpu_s_per_m_received"] for r in rs if r.get("cpu_s_per_m_received") is not None]
            sent = sum(r.get("sent_lines", 0) for r in rs)
            recv = sum(r.get("received_lines_socket", 0) for r in rs)
            drops = sum(r.get("socket_drops", 0) for r in rs)
            rss = rs[-1].get("server_rss_kib") if rs else None
            rng = f"{min(vals):.3f}..{max(vals):.3f}" if vals else "n/a"
            pct = f"{100.0 * recv / sent:.2f}%" if sent else "n/a"
            p(
                f"| {NAMES[s]} | {fmt(med[s])} | {rng} | "
                f"{'1.0x' if s == 'floor' else ratio(med[s], med.get('floor'))} | "
                f"{'1.0x' if s == 'dynostat' else ratio(med[s], med.get('dynostat'))} | "
                f"{sent:,} | {drops:,} | {pct} | {fmt(mib(rss), 1, ' MiB')} |"
            )
        p("")

    cpu_table("cpu", "mixed load", "cpu_rate", "cpu_lines")
    cpu_table("cpu_long", "long lines", "long_rate", "long_lines")
    cpu_table("cpu_counters", "counters only", "counters_rate", "counters_lines")

    # Fast
    p(f"## One sender at {int(meta.get('fast_rate', 0)):,} lines/s ({int(meta.get('fast_lines', 0)):,} lines)")
    p("")
    p("| server | achieved lines/s | lines sent | datagrams dropped (socket) | lines received | received | CPU-s per M received | x floor |")
    p("|---|---|---|---|---|---|---|---|")
    fast_floor = next((r.get("cpu_s_per_m_received") for r in rows("floor", "fast")), None)
    for s in servers:
        for r in rows(s, "fast"):
            sent = r.get("sent_lines", 0)
            recv = r.get("received_lines_socket", 0)
            pct = 100.0 * recv / sent if sent else 0.0
            p(
                f"| {NAMES[s]} | {int(r.get('achieved_rate', 0)):,} | {sent:,} | "
                f"{r.get('socket_drops', 0):,} | {recv:,} | {pct:.2f}% | "
                f"{fmt(r.get('cpu_s_per_m_received'))} | "
                f"{'1.0x' if s == 'floor' else ratio(r.get('cpu_s_per_m_received'), fast_floor)} |"
            )
    p("")

    # Memory
    p("## Memory")
    p("")
    p(
        f"Idle: 2 s after start. Contexts: a fresh server gets {int(meta.get('ctx', 0)):,} distinct contexts "
        "(each 3 times, at 100,000 lines/s, starting just after a flush boundary); RSS is read when the "
        "socket has drained, then again after the next flush, whose peak shows in VmHWM. "
        f"dynostat runs with DYNOSTAT_MEMORY_LIMIT={meta.get('dynostat_memory_limit', 'default')} in every phase."
    )
    p("")
    p(
        "| server | idle RSS | idle anonymous / file-backed | RSS with the contexts live (anonymous) "
        "| peak through the next flush (VmHWM) | RSS after that flush | vs dynostat (live) |"
    )
    p("|---|---|---|---|---|---|---|")
    stateful = [s for s in servers if s != "floor"]
    ctx_rss = {}
    for s in stateful:
        rs = rows(s, "contexts")
        ctx_rss[s] = rs[-1].get("server_rss_kib") if rs else None
    base_ctx = ctx_rss.get("dynostat")
    for s in stateful:
        idle = rows(s, "idle")
        idle_kib = idle[-1].get("rss_kib") if idle else None
        anon = idle[-1].get("rss_anon_kib") if idle else None
        filed = idle[-1].get("rss_file_kib") if idle else None
        rs = rows(s, "contexts")
        live_anon = rs[-1].get("server_rss_anon_kib") if rs else None
        fl = rows(s, "contexts_flushed")
        hwm = fl[-1].get("hwm_kib") if fl else (rs[-1].get("server_hwm_kib") if rs else None)
        after = fl[-1].get("rss_kib") if fl else None
        p(
            f"| {NAMES[s]} | {fmt(mib(idle_kib), 2, ' MiB')} | {fmt(mib(anon), 2)} / {fmt(mib(filed), 2)} MiB | "
            f"{fmt(mib(ctx_rss[s]), 1, ' MiB')} ({fmt(mib(live_anon), 1)}) | {fmt(mib(hwm), 1, ' MiB')} | "
            f"{fmt(mib(after), 1, ' MiB')} | {'1.0x' if s == 'dynostat' else ratio(ctx_rss[s], base_ctx)} |"
        )
    p("")

    # Startup
    p("## Startup (exec to ready)")
    p("")
    p("| server | UDP port bound, median ms (min..max) | \"listening\" logged, median ms | runs |")
    p("|---|---|---|---|")
    for s in servers:
        for r in rows(s, "startup"):
            p(
                f"| {NAMES[s]} | {fmt(r.get('port_ready_ms_median'))} "
                f"({fmt(r.get('port_ready_ms_min'))}..{fmt(r.get('port_ready_ms_max'))}) | "
                f"{fmt(r.get('log_ready_ms_median'))} | {r.get('runs')} |"
            )
    p("")

    # Size
    p("## Binary size")
    p("")
    size = meta.get("dynostat_size")
    stripped = meta.get("dynostat_size_stripped")
    p(f"- dynostat release binary: {int(size):,} bytes as built; {int(stripped):,} bytes after `strip -s`." if size and stripped else "- dynostat: n/a")
    if meta.get("statsdproxy_size"):
        p(f"- statsdproxy {meta.get('statsdproxy_version')} (cargo install, its own release profile): {int(meta['statsdproxy_size']):,} bytes.")
    p("")

    # Telemetry cross-check
    tel = rows("dynostat", "telemetry")
    if tel:
        sent = sum(r.get("sent_lines", 0) for r in results if r.get("server") == "dynostat" and r.get("phase") in CPU_PHASES)
        recv = sum(r.get("received_lines_socket", 0) for r in results if r.get("server") == "dynostat" and r.get("phase") in CPU_PHASES)
        p("## Cross-check: dynostat's own count")
        p("")
        t = tel[-1]
        where = (
            f"summed from the {t.get('rows')} requests the stand-in intake received"
            if t.get("source") == "intake"
            else f"summed over {t.get('rows')} console summary lines"
        )
        p(
            f"Lines sent to dynostat in the CPU phases and the 1M/s phase: {sent:,}; sent minus kernel socket drops: "
            f"{recv:,}; `dynostat.lines` (self-telemetry, a RATE, times the interval, {where}): "
            f"{t.get('lines'):,}."
        )
        if t.get("source") == "intake":
            p("")
            p(
                f"dynostat forwarded to scripts/bench/intake.py on 127.0.0.1 (gzip JSON, `/api/v2/series` "
                f"and the rest): {t.get('intake_bytes', 0):,} compressed bytes, {t.get('series_points', 0):,} "
                "series points; its CPU figures include that work."
            )
        p("")

    p("## Commands")
    p("")
    p("```")
    seen = set()
    for line in commands.splitlines():
        if line not in seen:
            seen.add(line)
            p(line)
    p("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
