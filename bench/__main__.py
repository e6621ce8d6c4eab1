"""``python -m bench [--quick] [--section NAME ...]``: run the sections, print, save.

Each section prints a markdown table on stdout (progress goes to stderr) and
writes ``bench/results/<section>-<UTC timestamp>.json`` and
``bench/results/latest-<section>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import inprocess, peers
from ._harness import Section, environment, progress, render_rows

RESULTS = Path(__file__).resolve().parent / "results"

# Later issues add "redis" and "nats": a name and a function (quick) -> Section.
SECTIONS: dict[str, Callable[[bool], Section]] = {
    "inprocess": inprocess.section,
    "peers": peers.section,
}


def render(section: Section, env: dict[str, Any], seconds: float) -> str:
    """Return the section's markdown: the rows, its extra tables, and how it was run."""
    machine = env["machine"]
    parts = [
        f"## {section.name}",
        "",
        render_rows(section.rows),
        "",
        "Per call: median of the repeats (and the fastest repeat), each repeat a timed loop "
        "of `calls` calls after a warm-up; inputs made before the clock starts; GC on.",
        *("\n" + table for table in section.tables),
        "",
        f"- command: `{env['command']}`",
        f"- python: {env['implementation']} {env['python']}",
        f"- machine: {machine['cpus']} CPUs, {machine['platform']}, "
        f"load average at start {machine['loadavg_at_start']}",
        f"- date: {env['date']} (section took {seconds:.0f} s)",
    ]
    return "\n".join(parts) + "\n"


def save(section: Section, env: dict[str, Any], markdown: str, seconds: float) -> Path:
    """Write the JSON result and ``latest-<section>.md``; return the JSON's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = env["date"].replace("-", "").replace(":", "")
    path = RESULTS / f"{section.name}-{stamp}.json"
    payload = {
        **env,
        "section": section.name,
        "seconds": round(seconds, 1),
        "rows": section.rows,
        "targets": [target.check(section.rows) for target in section.targets],
        **section.extra,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"latest-{section.name}.md").write_text(markdown)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (< 1 minute)")
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    for name in args.section or list(SECTIONS):
        env = environment(command)
        started = time.monotonic()
        section = SECTIONS[name](args.quick)
        seconds = time.monotonic() - started
        markdown = render(section, env, seconds)
        print(markdown, flush=True)
        if not args.no_save:
            path = save(section, env, markdown, seconds)
            progress(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
