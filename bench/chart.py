"""Charts of a run (matplotlib, Agg): end-to-end throughput and in-process cost per call.

``throughput.png``: per backend, per QoS, the raw client's ceiling, catga and FastStream
on the same transport primitive, side by side, with catga's share of the raw figure.
``inprocess.png``: µs per call of catga, mediatr and python-cqrs doing the same work.
A run of some sections only writes ``partial-*.png`` so the published charts always
match ``latest.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw"]

RAW_LABEL = {
    "redis": "raw redis-py (ceiling: pipelined XADD, streams)",
    "nats": "raw nats-py (ceiling: core / JetStream)",
}
COLOURS = {"raw": "#9e9e9e", "catga": "#1f77b4", "faststream": "#ff7f0e"}


def _throughput(sections: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    backends = [b for b in ("redis", "nats") if b in sections]
    fig, axes = plt.subplots(1, len(backends), figsize=(6.2 * len(backends), 4.6), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        rows = [r for r in sections[backend].rows if r["case"] == "throughput"]
        by_key = {r.get("key"): r for r in rows}
        headline = ("catga-qos0", "catga-qos1", "catga-qos2")  # batch publish
        catga = sorted((r for r in rows if r.get("key") in headline), key=lambda r: r["qos"])
        width = 0.26
        for i, row in enumerate(catga):
            raw = by_key.get(row.get("pct_of_raw_vs"))
            peer = by_key.get(row.get("x_faststream_vs"))
            bars = [("raw", raw), ("catga", row), ("faststream", peer)]
            for j, (impl, r) in enumerate(bars):
                if r is None:
                    continue
                x = i + (j - 1) * width
                value = r["msgs_per_s"]
                ax.bar(x, value, width, color=COLOURS[impl],
                       label=impl if i == 0 else None)  # fmt: skip
                text = f"{value / 1000:.1f}k"
                if impl == "catga" and row["pct_of_raw"] is not None:
                    text += f"\n{row['pct_of_raw']:.0f}% raw"
                if impl == "catga" and row["x_faststream"] is not None:
                    text += f"\n{row['x_faststream']:.1f}x FS"
                ax.text(x, value, text, ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(
            range(len(catga)),
            [f"QoS {r['qos']}\n({r['primitive']})" for r in catga],
        )
        ax.set_ylabel("messages / s, log scale (producer + consumer processes)")
        ax.set_title(f"{backend}: end-to-end throughput")
        top = max((r["msgs_per_s"] for r in rows), default=1)
        ax.set_yscale("log")
        ax.set_ylim(min(r["msgs_per_s"] for r in rows) / 3, top * 4)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(
            handles=[
                plt.Rectangle((0, 0), 1, 1, color=COLOURS[k])
                for k in ("raw", "catga", "faststream")
            ],
            labels=[RAW_LABEL[backend], "catga", "FastStream"],
            fontsize=8,
            loc="upper right",
            ncols=1,
        )
    fig.suptitle(
        "catga vs raw client vs FastStream, same work, same transport primitive (2-core machine)",
        fontsize=10,
    )
    fig.text(
        0.5, 0.005,
        "bars: median over rounds; % raw and x FS: median of the per-round ratios "
        "(each round runs every case once), so they can differ from the bars' ratio",
        ha="center", fontsize=7.5, color="#444444",
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _inprocess(sections: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = sections["peers"].rows
    works = list(dict.fromkeys(r["case"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    palette = ["#1f77b4", "#2ca02c", "#98df8a", "#d62728"]
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        for i, work in enumerate(works):
            r = next((r for r in rows if (r["case"], r["impl"]) == (work, impl)), None)
            if r is None:
                continue
            x = i + (j - (len(impls) - 1) / 2) * width
            ax.bar(x, r["us_per_call"], width, color=palette[j % len(palette)],
                   label=impl if i == 0 else None)  # fmt: skip
            ax.text(x, r["us_per_call"], f"{r['us_per_call']:.1f}", ha="center", va="bottom",
                    fontsize=7.5)  # fmt: skip
    ax.set_xticks(range(len(works)), works)
    top = max(r["us_per_call"] for r in rows)
    ax.set_ylim(0, top * 1.15)
    for i, work in enumerate(works):
        if not any(r["case"] == work and r["impl"].startswith("mediatr") for r in rows):
            ax.text(i, top * 0.02, "mediatr: no publish", ha="center", va="bottom",
                    rotation=90, fontsize=7, color="#555555")  # fmt: skip
    ax.set_ylabel("µs per call (lower is better)")
    ax.set_title("in process: catga (QoS 1, default chain) vs mediatr and python-cqrs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(sections: dict[str, Any], results: Path, complete: bool) -> list[str]:
    """Draw the charts the run has data for; return their file names (relative to results)."""
    import matplotlib

    matplotlib.use("Agg")
    results.mkdir(parents=True, exist_ok=True)
    prefix = "" if complete else "partial-"
    written = []
    if "redis" in sections or "nats" in sections:
        name = f"{prefix}throughput.png"
        _throughput(sections, results / name)
        written.append(name)
    if "peers" in sections:
        name = f"{prefix}inprocess.png"
        _inprocess(sections, results / name)
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.chart RUN.json``: redraw a saved run's charts (as partial-*.png)."""
    import argparse
    import json
    from types import SimpleNamespace

    parser = argparse.ArgumentParser(prog="python -m bench.chart", description=main.__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    payload = json.loads(args.run.read_text())
    sections = {
        name: SimpleNamespace(rows=data["rows"]) for name, data in payload["sections"].items()
    }
    for name in draw(sections, args.out, complete=False):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
