"""Render the dashboard's panels from a run of the real-Prometheus test, to look at it as a user does.

    EPCTL_DASHBOARD_DUMP=/tmp/dash.json .venv/bin/pytest tests/integration/test_monitoring.py -k real
    .venv/bin/pip install matplotlib   # not a dependency of epctl: only this script uses it
    .venv/bin/python tests/integration/render_dashboard.py /tmp/dash.json docs/dashboard.png

A grid like Grafana's (two panels a row, titles and legends as the dashboard says, units per query, a
right axis for a second unit), time in seconds since the scenario started, its phases marked.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

UNITS = {"short": "", "s": "seconds", "ops": "per second"}


def legend(fmt: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or str(metric)


def main(source: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[str, Any] = json.loads(open(source).read())
    panels = data["panels"]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(18, 3.6 * rows), squeeze=False)
    start = data["start"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        units = list(dict.fromkeys(t["unit"] for t in panel["targets"]))
        twin = ax.twinx() if len(units) > 1 else None
        for target in panel["targets"]:
            axis = twin if twin is not None and target["unit"] != units[0] else ax
            style = "--" if axis is twin else "-"
            for series in target["result"]:
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                axis.plot(xs, ys, style, linewidth=1.2, label=legend(target["legendFormat"], series["metric"]))
        for name, at in data["phases"][1:]:
            ax.axvline(at - start, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate(name, (at - start, 1), xycoords=("data", "axes fraction"), fontsize=7, color="grey",
                        va="top", rotation=90)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_ylabel(UNITS.get(units[0], units[0]), fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            twin.set_ylabel(UNITS.get(units[1], units[1]), fontsize=8)
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize=6, loc="center left", ncol=1 + len(labels) // 8)
        else:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", color="grey")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[-1].set_xlabel("seconds since the scenario started", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
