"""``python -m bench [--quick] [--section NAME ...]``: run every section in one run, print, save.

Sections: ``inprocess`` (catga's dispatch, messages, ids, serializer, RSS), ``peers``
(mediatr and python-cqrs doing the same in-process work), ``redis`` and ``nats``
(catga end to end against the raw client and FastStream, separate processes, servers
started on free loopback ports), ``growth`` (cost growth: consumers, offered rate,
memory with messages in flight).

One run writes ``bench/results/run-<UTC timestamp>.json`` (every row of every
section, the targets, the environment and the load average around each section)
and, when every section ran, ``bench/results/latest.md`` and the charts
``bench/results/throughput.png`` and ``bench/results/inprocess.png``; a run of some
sections only writes ``bench/results/latest-<sections>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import e2e, growth, inprocess, peers
from ._harness import Section, environment, progress, render_rows

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (needs servers, runner). Runners of end-to-end sections take the server URLs.
SECTIONS: dict[str, tuple[tuple[str, ...], Callable[..., Section]]] = {
    "inprocess": ((), inprocess.section),
    "peers": ((), peers.section),
    "redis": (("redis",), lambda quick, urls: e2e.redis_section(quick, urls["redis"])),
    "nats": (("nats",), lambda quick, urls: e2e.nats_section(quick, urls["nats"])),
    "growth": (("redis", "nats"), growth.section),
}

# End-to-end targets (issue 6): (label, backend, qos, at least % of raw).
RAW_TARGETS = [
    ("Redis QoS 1 >= 60% of raw (pipelined XADD -> XREADGROUP)", "redis", 1, 60.0),
    ("NATS QoS 1 >= 60% of raw JetStream", "nats", 1, 60.0),
    ("NATS QoS 0 >= 50% of raw core", "nats", 0, 50.0),
]
PEER_FACTOR = 2.0  # every catga figure >= 2x FastStream's on the same work and primitive
HEADLINE = ("catga-qos0", "catga-qos1", "catga-qos2")  # batch publish: the headline rows


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def e2e_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the end-to-end targets against the throughput rows."""
    through = [r for r in rows if r.get("group") == "e2e" and r["case"] == "throughput"]
    checked = []
    for label, backend, qos, at_least in RAW_TARGETS:
        key = (backend, "catga", qos)
        row = next((r for r in through if (r["backend"], r["impl"], r["qos"]) == key), None)
        if row is None:
            continue
        pct = row["pct_of_raw"]
        checked.append(
            {
                "target": label,
                "measured": f"{pct:.0f}% ({row['msgs_per_s']:,} msg/s)",
                "met": pct is not None and pct >= at_least,
            }
        )
    for row in through:
        if row["impl"] != "catga" or row["x_faststream"] is None:
            continue
        checked.append(
            {
                "target": f"{row['backend']} QoS {row['qos']} >= {PEER_FACTOR:g}x FastStream "
                f"({row['primitive']}, {row['publish']})",
                "measured": f"{row['x_faststream']:.2f}x ({row['msgs_per_s']:,} msg/s)",
                "met": row["x_faststream"] >= PEER_FACTOR,
            }
        )
    return checked


def all_targets(sections: dict[str, Section]) -> list[dict[str, Any]]:
    """Every target of the run, in one list of {target, measured, met}."""
    out = []
    if "inprocess" in sections:
        s = sections["inprocess"]
        for t in s.targets:
            c = t.check(s.rows)
            m = c["measured_us"]
            out.append(
                {"target": c["target"], "measured": "-" if m is None else f"{m:.3f} us",
                 "met": c["met"]}
            )  # fmt: skip
    if "peers" in sections:
        for t in sections["peers"].extra["ratio_targets"]:
            m = t["measured"]
            out.append(
                {"target": t["target"], "measured": "-" if m is None else f"{m:.3f}x",
                 "met": t["met"]}
            )  # fmt: skip
    rows = [r for name in ("redis", "nats") if name in sections for r in sections[name].rows]
    out += e2e_targets(rows)  # type: ignore[arg-type]
    return out


def _fmt(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def render_e2e(section: Section) -> str:
    """Markdown for an end-to-end section: throughput, then latency."""
    rows: list[dict[str, Any]] = section.rows  # type: ignore[assignment]
    lines = [
        "| impl | QoS | primitive | publish | msg/s (median) | runs | % of raw | "
        "catga / FastStream | received/sent | note |",
        "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["case"] != "throughput":
            continue
        lines.append(
            f"| {r['impl']} | {_fmt(r['qos'], 'd')} | {r['primitive']} | {r['publish']} | "
            f"{_fmt(r['msgs_per_s'])} | {', '.join(f'{x:,}' for x in r['runs'])} | "
            f"{_fmt(r['pct_of_raw'], '.0f', '%')} | {_fmt(r['x_faststream'], '.2f', 'x')} | "
            f"{r['received']}/{r['sent']} | {r['note']} |"
        )
    lines += [
        "",
        "| latency | QoS | primitive | p50 ms | p99 ms | p999 ms | received/sent | method |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["case"] != "latency":
            continue
        lines.append(
            f"| {r['impl']} | {_fmt(r['qos'], 'd')} | {r['primitive']} | "
            f"{_fmt(r['p50_ms'], '.3f')} | {_fmt(r['p99_ms'], '.3f')} | "
            f"{_fmt(r['p999_ms'], '.3f')} | {r['received']}/{r['sent']} | {r['note']} |"
        )
    return "\n".join(lines)


def render_expectation(sections: dict[str, Section]) -> str:
    """The headline: per backend, catga at QoS 0/1/2 against the raw client and FastStream."""
    lines = [
        "| backend | QoS | primitive | catga msg/s | % of raw | raw msg/s | FastStream msg/s | "
        "catga / FastStream | catga p50 ms | catga received/sent (worst round) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for name in ("redis", "nats"):
        if name not in sections:
            continue
        rows: list[dict[str, Any]] = sections[name].rows  # type: ignore[assignment]
        by_key = {r.get("key"): r for r in rows if r["case"] == "throughput"}
        catga = [r for r in rows if r["case"] == "throughput" and r.get("key") in HEADLINE]
        for r in sorted(catga, key=lambda r: r["qos"]):
            raw = by_key.get(r.get("pct_of_raw_vs"))
            peer = by_key.get(r.get("x_faststream_vs"))
            lat = next(
                (x for x in rows if x["case"] == "latency" and x["impl"] == "catga"
                 and x["qos"] == r["qos"]), None,
            )  # fmt: skip
            lines.append(
                f"| {name} | {r['qos']} | {r['primitive']} | {_fmt(r['msgs_per_s'])} | "
                f"{_fmt(r['pct_of_raw'], '.0f', '%')} | "
                f"{_fmt(raw['msgs_per_s'] if raw else None)} | "
                f"{_fmt(peer['msgs_per_s'] if peer else None)} | "
                f"{_fmt(r['x_faststream'], '.2f', 'x')} | "
                f"{_fmt(lat['p50_ms'] if lat else None, '.3f')} | "
                f"{r['received']:,}/{r['sent']:,} |"
            )
        rates = {r["qos"]: r["msgs_per_s"] for r in catga}
        if {0, 1, 2} <= rates.keys():
            order = rates[0] >= rates[1] >= rates[2]
            notes.append(
                f"{name}: QoS 0 fastest and QoS 2 slowest: {'yes' if order else 'NO'} "
                f"({rates[0]:,} >= {rates[1]:,} >= {rates[2]:,} msg/s)"
            )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def render_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    lines += [
        f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in targets
    ]
    return "\n".join(lines)


def render_section(section: Section, meta: dict[str, Any]) -> str:
    if section.name in ("redis", "nats"):
        body = render_e2e(section)
    elif section.name == "growth":
        body = ""
    else:
        body = render_rows(section.rows)
    parts = [
        f"## {section.name}",
        "",
        f"(took {meta['seconds']:.0f} s; load average before {meta['load_before']}, "
        f"after {meta['load_after']})",
        "",
        body,
        *("\n" + table for table in section.tables),
    ]
    return "\n".join(parts)


def render(
    sections: dict[str, Section], meta: dict[str, dict[str, Any]], env: dict[str, Any],
    targets: list[dict[str, Any]], total: float, charts: list[str],
) -> str:  # fmt: skip
    machine = env["machine"]
    head = [
        "# catga benchmarks",
        "",
        f"- command: `{env['command']}`",
        f"- python: {env['implementation']} {env['python']}",
        f"- machine: {machine['cpus']} CPUs ({machine['cpus']} cores: producer, consumer and "
        f"broker share them), {machine['platform']}",
        f"- load average at start {machine['loadavg_at_start']}, at the end {_load()}",
        f"- date: {env['date']} (the run took {total:.0f} s)",
        "",
    ]
    if "redis" in sections or "nats" in sections:
        head += [
            "## catga end to end: QoS 0 fastest, QoS 2 slowest, and the cost against the raw "
            "client",
            "",
            render_expectation(sections),
            "",
        ]
    head += [*(f"![{c}]({c})" for c in charts), "", "## targets", "", render_targets(targets), ""]
    body = [render_section(sections[name], meta[name]) + "\n" for name in sections]
    how = [
        "## method",
        "",
        "In process: per call, the median of the repeats (and the fastest repeat), each "
        "repeat a timed loop of `calls` calls after a warm-up; inputs made before the clock "
        "starts; GC on; peers interleaved with catga repeat by repeat. End to end: producer "
        "and consumer in separate processes; rate = messages handled / (last handled - "
        "producer start); every case of a backend runs once per round, the median over rounds "
        "is shown, and ratios are medians of per-round ratios (same round, same machine state).",
    ]
    return "\n".join(head + body + how) + "\n"


README = Path(__file__).resolve().parent / "README.md"
MARKS = ("<!-- key-ratios -->", "<!-- /key-ratios -->")


def update_readme(
    sections: dict[str, Section], env: dict[str, Any], targets: list[dict[str, Any]], total: float
) -> None:
    """Put the run's headline table and targets between the README's key-ratio marks."""
    if not README.exists():
        return
    text = README.read_text()
    start, end = text.find(MARKS[0]), text.find(MARKS[1])
    if start < 0 or end < 0:
        return
    machine = env["machine"]
    block = [
        MARKS[0],
        f"Command `{env['command']}`, {env['date']}, Python {env['python']}, "
        f"{machine['cpus']} cores, load average at start {machine['loadavg_at_start']}, "
        f"{total / 60:.0f} minutes.",
        "",
        render_expectation(sections),
        "",
        render_targets(targets),
    ]
    README.write_text(text[:start] + "\n".join(block) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (~2 minutes in all)")
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    names = args.section or list(SECTIONS)
    names = [n for n in SECTIONS if n in names]  # the canonical order
    env = environment(command)
    started = time.monotonic()
    sections: dict[str, Section] = {}
    meta: dict[str, dict[str, Any]] = {}
    needs = tuple(sorted({s for n in names for s in SECTIONS[n][0]}))
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name in names:  # in-process sections first: no broker running yet
            wants, runner = SECTIONS[name]
            if wants and not urls:
                urls = stack.enter_context(e2e.servers(needs))
            load_before, t0 = _load(), time.monotonic()
            progress(f"section {name} (load average {load_before})")
            section = runner(args.quick, urls) if wants else runner(args.quick)
            sections[name] = section
            meta[name] = {
                "seconds": round(time.monotonic() - t0, 1),
                "load_before": load_before,
                "load_after": _load(),
            }
    total = time.monotonic() - started
    targets = all_targets(sections)
    complete = set(names) == set(SECTIONS)
    charts: list[str] = []
    if not args.no_save:
        from . import chart

        charts = chart.draw(sections, RESULTS, complete)
    markdown = render(sections, meta, env, targets, total, charts)
    print(markdown, flush=True)
    if args.no_save:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = env["date"].replace("-", "").replace(":", "")
    payload = {
        **env,
        "seconds": round(total, 1),
        "loadavg_at_end": _load(),
        "targets": targets,
        "sections": {
            name: {"rows": s.rows, **meta[name], **s.extra}
            | ({"targets": [t.check(s.rows) for t in s.targets]} if s.targets else {})
            for name, s in sections.items()
        },
    }
    path = RESULTS / f"run-{stamp}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    md = RESULTS / ("latest.md" if complete else f"latest-{'+'.join(names)}.md")
    md.write_text(markdown)
    if complete:
        update_readme(sections, env, targets, total)
    progress(f"wrote {', '.join([str(path.relative_to(RESULTS.parent.parent)), md.name, *charts])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
