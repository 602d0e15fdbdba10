"""Pictures of an operator_scale.py report (matplotlib, written as PNGs next to its JSON):

* operator_latency.png: the distribution (empirical CDF) of job created -> pod created and of
  pod Succeeded -> job Succeeded, per side, one row per N (and the steady state's burst);
* operator_requests.png: the operator's API requests per minute against the jobs running (with
  the goal of 1 per running job per minute), and the requests per job of each side by kind.

Every figure names the machine, the load average over each side's phase, the commit and the date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "limit": "#222222",
    "ours": "#1f77b4",
    "before": "#9467bd",
    "native": "#d62728",
    "nativeFast": "#ff7f0e",
}
LABELS = {
    "limit": "limit (bare controller)",
    "ours": "ours",
    "before": "before",
    "native": "Job controller, 20 qps",
    "nativeFast": "Job controller, 200 qps",
}
ORDER = ("limit", "ours", "before", "nativeFast", "native")


def _footer(report: dict[str, Any]) -> str:
    load = report.get("loadAverage") or {}
    return (
        f"{report.get('machine')}; load average {load.get('start')} at the start, {load.get('end')} at "
        f"the end; commit {report.get('commit')}"
        + (f", before = {report['baselineRef']}" if report.get("baselineRef") else "")
        + f"; {report.get('startedAt')}; {report.get('nodes')} fake 8-GPU nodes"
    )


def _load(part: dict[str, Any]) -> str:
    load = part.get("load") or {}
    return f"load {load.get('start')}-{load.get('end')}"


def _ecdf(ax: Any, values: list[float], side: str, label: str) -> None:
    if not values:
        return
    ordered = sorted(max(v, 1e-3) for v in values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", color=COLORS[side], label=label)


def latency_figure(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for r in report.get("rounds", []):
        rows.append((f"N={r['n']}", {s: r[s] for s in ORDER if r.get(s)}))
    steady = report.get("steady") or {}
    burst = {
        s: steady[s]["burstWhileRunning"] for s in ORDER if (steady.get(s) or {}).get("burstWhileRunning")
    }
    if burst:
        rows.append((f"{steady.get('burst')} new jobs while {steady.get('running')} run", burst))
    if not rows:
        rows.append(("no rounds", {}))
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 3.6 * len(rows) + 0.8), squeeze=False)
    for (title, sides), (ax_create, ax_done) in zip(rows, axes, strict=True):
        for side, part in sides.items():
            label = f"{LABELS[side]} ({_load(part)})"
            s = part.get("samples") or {}
            _ecdf(ax_create, s.get("podCreated") or [], side, label)
            _ecdf(ax_done, s.get("propagation") or [], side, label)
        if not any((part.get("samples") or {}).get("propagation") for part in sides.values()):
            ax_done.set_visible(False)  # the steady state's burst is not finished
        ax_create.set_title(f"{title}: job created -> pod created")
        ax_done.set_title(f"{title}: pod Succeeded -> job Succeeded with metrics")
        for ax in (ax_create, ax_done):
            ax.set_xscale("log")
            ax.set_xlabel("seconds (log scale)")
            ax.set_ylabel("fraction of jobs")
            ax.set_ylim(0, 1.02)
            ax.grid(True, which="both", alpha=0.3)
            ax.axhline(0.99, color="grey", lw=0.6, ls=":")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Operator at scale: latency distributions, every side in one run", fontsize=12)
    fig.text(0.5, 0.005, _footer(report), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def requests_figure(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_run, ax_kind) = plt.subplots(1, 2, figsize=(13, 4.8))
    top = 1
    for side in ("ours", "before"):
        points = []
        for r in report.get("rounds", []):
            idle = (r.get(side) or {}).get("idleRunning")
            if idle:
                points.append((r["n"], idle["requestsPerMinute"], _load(idle)))
        idle = ((report.get("steady") or {}).get(side) or {}).get("idleRunning")
        if idle:
            points.append((idle["running"], idle["requestsPerMinute"], _load(idle)))
        if not points:
            continue
        points.sort()
        xs, ys = [p[0] for p in points], [max(p[1], 0.5) for p in points]
        top = max(top, *xs)
        ax_run.plot(xs, ys, "o-", color=COLORS[side], label=LABELS[side])
        for x, y, load in points:
            ax_run.annotate(
                f"{y:g}/min\n{load}", (x, y), fontsize=6, xytext=(4, 4), textcoords="offset points"
            )
    ax_run.plot([1, top], [1, top], ls="--", color="green", lw=1, label="goal: 1 per running job per minute")
    ax_run.set_xscale("log")
    ax_run.set_yscale("log")
    ax_run.set_xlabel("jobs running")
    ax_run.set_ylabel("operator API requests per minute (idle window)")
    ax_run.set_title("Requests while jobs run and nothing else happens")
    ax_run.grid(True, which="both", alpha=0.3)
    ax_run.legend(fontsize=7)

    rounds = report.get("rounds", [])
    biggest = max(rounds, key=lambda r: r["n"]) if rounds else None
    if biggest:
        sides = [s for s in ORDER if biggest.get(s)]
        kinds: list[str] = []
        for s in sides:
            for part in ("burst", "propagation"):
                for k in ((biggest[s].get(part) or {}).get("requests") or {}).get("byKind", {}):
                    if k not in kinds:
                        kinds.append(k)
        bottoms = [0.0] * len(sides)
        cmap = plt.get_cmap("tab20")
        for i, kind in enumerate(kinds):
            heights = []
            for s in sides:
                total = 0.0
                for part in ("burst", "propagation"):
                    total += (
                        ((biggest[s].get(part) or {}).get("requests") or {}).get("byKind", {}).get(kind, 0)
                    )
                heights.append(total / biggest["n"])
            ax_kind.bar([LABELS[s] for s in sides], heights, bottom=bottoms, color=cmap(i % 20), label=kind)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        ax_kind.set_ylabel("API requests per job, created to Succeeded")
        ax_kind.set_title(f"Requests per job by kind, N={biggest['n']}")
        ax_kind.tick_params(axis="x", labelsize=7, rotation=15)
        ax_kind.legend(fontsize=6, ncol=2)
    else:  # a steady-state run only (--jobs ""): no round to break down
        ax_kind.axis("off")
        ax_kind.text(0.5, 0.5, "no --jobs round in this run", ha="center", va="center", fontsize=9)
    fig.text(0.5, 0.005, _footer(report), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        latency_figure(report, out_dir / "operator_latency.png"),
        requests_figure(report, out_dir / "operator_requests.png"),
    ]
