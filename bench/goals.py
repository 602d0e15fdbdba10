"""Issue 12's goals, evaluated from one operator_scale.py report: each a ratio (or a figure) of
things measured side by side in that run, with pass / fail / not measured.

Pure functions of the report's JSON, so the bookkeeping has unit tests (tests/bench)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Where the issue states each goal.
ALL_PODS_NS = (1000, 5000)
NATIVE_N = 1000
PROPAGATION_N = 1000
CPU_N = 1000

GOAL_ALL_PODS = 1.5  # all N pods exist, ours / limit
GOAL_P99_LIMIT = 1.5  # pod created p99, ours / limit
GOAL_P99_NATIVE = 1.0  # pod created p99, ours / the Job controller at full speed
GOAL_PROPAGATION_SECONDS = 2.0  # pod Succeeded -> job Succeeded with metrics, p99
GOAL_PROPAGATION_LIMIT = 1.5  # the same, ours / the bare status patch
GOAL_REQUESTS_PER_RUNNING_JOB_MINUTE = 1.0
GOAL_RSS_MIB = 150.0  # with 10,000 jobs (5,000 finished, 5,000 running)
GOAL_CPU_RATIO = 0.5  # CPU seconds per 1,000 lifecycles, ours / before


@dataclass
class Goal:
    """One goal at one N: `value` compared with `target` (value <= target passes)."""

    key: str
    what: str
    value: float | None
    target: float
    detail: str = ""
    condition: bool | None = True  # a second condition the goal needs (None: not measured)

    @property
    def passed(self) -> bool | None:
        if self.value is None or self.condition is None:
            return None
        return self.value <= self.target and bool(self.condition)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "not measured"}[self.passed]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Goal:
        """From `as_dict`'s output (the report's JSON)."""
        return cls(
            d["key"], d["what"], d["value"], d["target"], d.get("detail", ""), d.get("condition", True)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 2 places; None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def cpu_per_thousand(side: dict[str, Any] | None) -> float | None:
    """Operator CPU seconds for the whole life of N jobs (burst: created to Running; propagation:
    pods finish to jobs Succeeded), per 1,000 jobs."""
    burst = _get(side, "burst", "operator", "cpuSeconds")
    done = _get(side, "propagation", "operator", "cpuSeconds")
    n = _get(side, "n")
    if burst is None or done is None or not n:
        return None
    return round((burst + done) * 1000 / n, 2)


def requests_per_running_job_minute(idle: dict[str, Any] | None, running: int | None) -> float | None:
    per_minute = _get(idle, "requestsPerMinute")
    if per_minute is None or not running:
        return None
    return round(per_minute / running, 3)


def _rounds(report: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [r for r in report.get("rounds", []) if r.get("n") == n] or [{}]


Measure = Callable[[dict[str, Any]], tuple[float | None, str]]


def over_rounds(report: dict[str, Any], n: int, measure: Measure) -> tuple[float | None, str]:
    """`measure` (a value and how it was found) of every round at N: one round's as it is; of
    several rounds (`--repeat`), the median, None unless every round measured it."""
    found = [measure(r) for r in _rounds(report, n)]
    if len(found) == 1:
        return found[0]
    values = [v for v, _ in found if v is not None]
    detail = "; ".join(f"{v} ({d})" for v, d in found)
    if len(values) < len(found):
        return None, f"not measured in every round: {detail}"
    return round(statistics.median(values), 2), f"median of {len(found)} rounds: {detail}"


def _ratio_of(*path: str, against: str = "limit") -> Measure:
    def measure(r: dict[str, Any]) -> tuple[float | None, str]:
        a, b = _get(r, "ours", *path), _get(r, against, *path)
        return ratio(a, b), f"{a} s / {b} s"

    return measure


def _propagation_p99(r: dict[str, Any]) -> tuple[float | None, str]:
    a = _get(r, "ours", "propagation", "podSucceededToJobDone", "p99")
    return a, f"{a} s"


def _cpu_ratio(r: dict[str, Any]) -> tuple[float | None, str]:
    a, b = cpu_per_thousand(r.get("ours")), cpu_per_thousand(r.get("before"))
    return ratio(a, b), f"{a} s / {b} s"


def evaluate(report: dict[str, Any]) -> list[Goal]:
    goals: list[Goal] = []
    for n in ALL_PODS_NS:
        value, detail = over_rounds(report, n, _ratio_of("burst", "allPodsExistSeconds"))
        goals.append(Goal(f"1a N={n}", f"all {n} pods exist, ours / limit", value, GOAL_ALL_PODS, detail))
        value, detail = over_rounds(report, n, _ratio_of("burst", "podCreated", "p99"))
        goals.append(
            Goal(f"1b N={n}", f"pod created p99, ours / limit (N={n})", value, GOAL_P99_LIMIT, detail)
        )
    value, detail = over_rounds(
        report, NATIVE_N, _ratio_of("burst", "podCreated", "p99", against="nativeFast")
    )
    goals.append(Goal(f"2 N={NATIVE_N}", "pod created p99, ours / Job controller at full speed",
                      value, GOAL_P99_NATIVE, detail))  # fmt: skip
    value, detail = over_rounds(report, PROPAGATION_N, _propagation_p99)
    goals.append(Goal(f"3a N={PROPAGATION_N}", "pod Succeeded -> job Succeeded with metrics, p99 s",
                      value, GOAL_PROPAGATION_SECONDS, detail))  # fmt: skip
    value, detail = over_rounds(
        report, PROPAGATION_N, _ratio_of("propagation", "podSucceededToJobDone", "p99")
    )
    goals.append(Goal(f"3b N={PROPAGATION_N}", "pod Succeeded -> job Succeeded p99, ours / bare status patch",
                      value, GOAL_PROPAGATION_LIMIT, detail))  # fmt: skip
    steady = report.get("steady") or {}
    running = steady.get("running")
    ours = steady.get("ours") or {}
    per_job = requests_per_running_job_minute(ours.get("idleRunning"), running)
    progress = _get(ours, "idleRunning", "progress")
    progress_ok = None if not progress else bool(progress.get("everyEpochReached"))
    detail = f"{_get(ours, 'idleRunning', 'requestsPerMinute')} requests/min with {running} running"
    if progress:
        detail += (
            f"; progress reached the status for {progress.get('epochsReached')} of "
            f"{progress.get('epochsReported')} epochs reported"
        )
    else:
        detail += "; progress not checked"
    goals.append(Goal(f"4a running={running}", "API requests per running job per minute (and progress "
                      "reaches the status every epoch)", per_job, GOAL_REQUESTS_PER_RUNNING_JOB_MINUTE,
                      detail, progress_ok))  # fmt: skip
    a = _get(ours, "burstWhileRunning", "burst", "podCreated", "p99")
    b = _get(steady, "limit", "burstWhileRunning", "burst", "podCreated", "p99")
    burst_n = _get(ours, "burstWhileRunning", "n")
    goals.append(Goal(f"4b running={running}", f"pod created p99 of {burst_n} new jobs while {running} run, "
                      "ours / limit", ratio(a, b), GOAL_P99_LIMIT, f"{a} s / {b} s"))  # fmt: skip
    rss = ours.get("rssPeakMiB")
    finished = steady.get("finished")
    goals.append(Goal(f"5a jobs={(running or 0) + (finished or 0)}",
                      f"operator RSS peak MiB with {finished} finished and {running} running jobs",
                      rss, GOAL_RSS_MIB, f"{rss} MiB"))  # fmt: skip
    value, detail = over_rounds(report, CPU_N, _cpu_ratio)
    goals.append(Goal(f"5b N={CPU_N}", "operator CPU s per 1,000 job lifecycles, ours / before",
                      value, GOAL_CPU_RATIO, detail))  # fmt: skip
    return goals


def markdown(goals: list[Goal]) -> list[str]:
    lines = ["| goal | what | measured | target | verdict | from |", "|---|---|---|---|---|---|"]
    for g in goals:
        lines.append(f"| {g.key} | {g.what} | {g.value} | <= {g.target:g} | {g.verdict} | {g.detail} |")
    return lines
