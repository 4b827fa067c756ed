"""Draw docs/performance.png from the benchmark's JSON (run with the peers' venv: matplotlib).

python benchmarks/chart.py docs/performance.json docs/performance.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, dst: str) -> None:
    with open(src) as fh:
        report: dict[str, Any] = json.load(fh)
    rows = [r for r in report["rows"] if r.get("status") == "ok"]
    bounds = ("limit", "relay")  # the echo and the relay, read against as bounds
    colors = [
        "#2b7bba" if n.startswith("taskhub") else "#999999" if n in bounds else "#e07b39"
        for n in (r["name"] for r in rows)
    ]
    # Each round trip ran at a stated worker concurrency: the label says which.
    names = [
        f"{r['name']} (c={r['concurrency']})" if "concurrency" in r else r["name"] for r in rows
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    panels = [
        ("throughput", "tasks/s (burst, higher is better)", False),
        ("seq_p50_ms", "sequential latency p50, ms (log)", True),
        ("peak_rss_mb", "peak RSS MiB (hub / redis-server / echo server / relay)", False),
    ]
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        values = [float(r.get(key) or 0.0) for r in rows]
        bars = ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        for bar, value in zip(bars, values, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {value:,.0f}" if value >= 10 else f" {value:.2f}",
                va="center",
                fontsize=8,
            )
    m = report.get("machine", {})
    fig.suptitle(
        f"TaskHub vs peers at equal worker concurrency (c) — {m.get('nproc')} CPU "
        f"{m.get('cpu', '')}, Python {m.get('python', '')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
