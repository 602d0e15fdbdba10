"""`make bench`: every benchmark under bench/, one after the other, and a summary.

    .venv/bin/python bench/run.py [--only operator,kueue,trainer,accuracy,failover] [--jobs 100,1000]
        [--nodes 128] [--idle-seconds 30] [--sides ...] [--baseline-ref COMMIT]
        [--running-jobs 5000 --burst-jobs 1000] [--full] [--kills 10]

* operator: bench/operator_scale.py (the operator against the bare limit, today's operator and
  kube-controller-manager's Job controller at two client limits; issue 12's goals, pass/fail)
  and bench/watch_cache.py (the watch cache's memory and CPU against plain dicts and JSON text)
* kueue: bench/kueue_admission.py (FineTuneJob admission latency with Kueue against without, N=100)
* trainer: bench/trainer_step.py (our train step against PaddleClas 2.6.0's),
  bench/trainer_pipeline.py (the full loop against the bare step) and bench/input_pipeline.py
  (the input pipeline alone, per CPU core, against PaddleClas 2.6.0's transforms)
* accuracy: bench/time_to_accuracy.py (finetune against from scratch on the digits)
* failover: bench/failover.py (two replicas with leader election, the leader SIGKILLed --kills
  times; against one replica restarted at once)

Each runs as its own process (its figures are not disturbed by the others' memory), writes its
JSON under bench/results/, and this script collects the headline ratios into
bench/results/summary.md with the machine's description. Every figure is a ratio measured in one
run on the same machine; absolute times on a shared machine say little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import goals  # noqa: E402
from bench.proc_sampler import cpu_model  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GROUPS = ("operator", "kueue", "trainer", "accuracy", "failover")
SIDE_NAMES = {
    "limit": "limit",
    "before": "before",
    "native": "Job controller 20 qps",
    "nativeFast": "Job controller 200 qps",
}
# Today's operator for the "before" side (main before issue 12's changes): measured beside ours.
BASELINE_REF = "1908136"


def machine() -> dict[str, Any]:
    try:
        paddle = metadata.version("paddlepaddle")
    except metadata.PackageNotFoundError:
        paddle = "not installed"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "paddle": paddle,
        "loadAverageAtStart": round(load, 2),
    }


def run(name: str, argv: list[str], log: list[dict[str, Any]]) -> bool:
    cmd = [sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = round(time.monotonic() - t0, 1)
    log.append({"name": name, "command": " ".join(["python", *cmd[1:]]).replace(str(ROOT) + "/", ""),
                "exitCode": proc.returncode, "seconds": seconds})  # fmt: skip
    if proc.returncode != 0:
        print(f"!!! {name} failed with exit code {proc.returncode}", file=sys.stderr)
    return proc.returncode == 0


def load(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((RESULTS / name).read_text())
    except (OSError, ValueError):
        return None


def summary_lines(groups: list[str]) -> list[str]:
    rows: list[tuple[str, str, str]] = []  # (benchmark, figure, value)
    goal_lines: list[str] = []
    if "operator" in groups and (wc := load("watch_cache.json")):
        for other, ratio in wc["oursOver"].items():
            rows.append((f"watch cache, {wc['jobs']} jobs", f"memory / put / read, ours / {other}",
                         f"{ratio['held']} / {ratio['put']} / {ratio['read']}"))  # fmt: skip
    if "operator" in groups and (op := load("operator_scale.json")):
        for r in op.get("rounds", []):
            n = r["n"]
            ours = r.get("ours") or {}
            for row in (x for x in op.get("ratios", []) if x["n"] == n):
                against = SIDE_NAMES.get(row["against"], row["against"])
                rows.append((f"operator N={n}", f"pod created p50 / p99, ours / {against}",
                             f"{row.get('podCreated.p50')} / {row.get('podCreated.p99')}"))  # fmt: skip
                rows.append(
                    (f"operator N={n}", f"all pods exist, ours / {against}", str(row.get("allPodsExist")))
                )
                if row.get("propagation.p99") is not None:
                    rows.append((f"operator N={n}", f"pod Succeeded -> job Succeeded p99, ours / {against}",
                                 str(row.get("propagation.p99"))))  # fmt: skip
            if r.get("bareCreate"):
                b = r["bareCreate"]
                rows.append((f"operator N={n}", "bare create: N pods alone from 16 threads, s (pods/s)",
                             f"{b['allPodsExistSeconds']} ({b['podsPerSecond']})"))  # fmt: skip
            prop = ours.get("propagation", {}).get("podSucceededToJobDone")
            if prop:
                rows.append((f"operator N={n}", "pod Succeeded -> job Succeeded p50 / p99 s, ours",
                             f"{prop['p50']} / {prop['p99']}"))  # fmt: skip
            for key, label in (("burst", "burst"), ("idleFinished", "idle, all Succeeded")):
                part = ours.get(key)
                if part:
                    o = part.get("operator", part)
                    rows.append((f"operator N={n}", f"operator RSS peak MiB / CPU s ({label})",
                                 f"{o['rssPeakMiB']} / {o['cpuSeconds']} in {o['seconds']} s"))  # fmt: skip
            if ours.get("burst"):
                reqs = ours["burst"]["requests"]
                done = (ours.get("propagation") or {}).get("requests", {})
                rows.append((f"operator N={n}", "API requests per job, ours (create+run / finish)",
                             f"{reqs['perJob']} / {done.get('perJob')}"))  # fmt: skip
            idle = ours.get("idleRunning")
            if idle:
                per_job = idle.get("requestsPerRunningJobPerMinute")
                value = f"{per_job} ({idle['requestsPerMinute']}/min)"
                rows.append((f"operator N={n}", "operator requests per minute per running job (idle)", value))
        steady = op.get("steady") or {}
        for side in ("ours", "before"):
            st = steady.get(side) or {}
            if st.get("idleRunning"):
                i = st["idleRunning"]
                figure = f"{st['finished']} finished + {st['running']} running: requests/min per running job"
                rows.append(
                    (f"operator steady ({side})", figure, str(i.get("requestsPerRunningJobPerMinute")))
                )
                rows.append((f"operator steady ({side})", "operator RSS peak MiB", str(st.get("rssPeakMiB"))))
        avg = op.get("loadAverage") or {}
        goal_lines = [
            "",
            f"Issue 12's goals (bench/goals.py; {op.get('machine')}, load average {avg.get('start')} "
            f"at the start, {avg.get('end')} at the end):",
            "",
            *goals.markdown([goals.Goal.from_dict(g) for g in op.get("goals", [])]),
        ]
        if op.get("figures"):
            goal_lines += [
                "",
                "Figures: " + ", ".join(f"[{Path(f).name}]({Path(f).name})" for f in op["figures"]),
            ]
    if "kueue" in groups and (kq := load("kueue_admission.json")) and kq.get("ratios"):
        for stage, label in (("podCreated", "pod created"), ("podRunning", "pod Running")):
            st = kq["pooled"]
            value = (
                f"{kq['ratios'][f'{stage}.p50']} / {kq['ratios'][f'{stage}.p99']} (Kueue "
                f"{st['kueue'][stage]['p50']} / {st['kueue'][stage]['p99']} s, without "
                f"{st['plain'][stage]['p50']} / {st['plain'][stage]['p99']} s)"
            )
            rows.append((f"Kueue N={kq['n']}", f"job created -> {label} p50 / p99, Kueue/without", value))
    if "trainer" in groups:
        if step := load("trainer_step.json"):
            figure = (
                f"PaddleClas/ours CPU time per step, ResNet50_vd batch {step['batch']} "
                f"at {step['imageSize']} px (goal >= 1.0)"
            )
            rows.append(("trainer step", figure, f"{step['ratioReferenceOverOurs']:.3f}"))
        if pipe := load("trainer_pipeline.json"):
            rows.append(("trainer pipeline", "loop overhead vs bare step, 2 workers (goal < 0.10)",
                         f"{pipe['overheadFraction']} ({pipe['fullLoopImagesPerSecond']} vs "
                         f"{pipe['bareStepImagesPerSecond']} img/s)"))  # fmt: skip
        if inp := load("input_pipeline.json"):
            rates = inp["imagesPerSecondPerCore"]
            figure = "PaddleClas 2.6.0's transforms / ours, CPU time per image (goal >= 1.5)"
            speedup = inp["speedupOfOurs"]["paddleclas"]
            value = f"{speedup} ({rates['ours']} vs {rates['paddleclas']} images/s per core)"
            rows.append(("input pipeline", figure, value))
    if "accuracy" in groups and (acc := load("time_to_accuracy.json")):
        runs = acc["runs"]
        for mode in ("finetune", "scratch"):
            got = runs[mode]["reached"]
            if got:
                value = f"epoch {got['epoch']}, {got['imagesSeen']} images, {got['wallSeconds']} s"
            else:
                value = f"not reached in {len(runs[mode]['epochs'])} epochs (best {runs[mode]['bestTop1']})"
            rows.append(("time to accuracy", f"{mode}: to top-1 {acc['target']}", value))
        rows.append(("time to accuracy", "ratios scratch/finetune", json.dumps(acc["ratios"])))
    if "failover" in groups and (fo := load("failover.json")):
        s = fo["summary"]
        n = len(fo["kills"])
        for key, label in (
            ("firstReconcileSeconds", "SIGKILL -> the other replica's first reconcile (goal <= 15 s)"),
            ("takeoverSeconds", "SIGKILL -> the Lease names the other replica"),
            ("firstWriteSeconds", "SIGKILL -> the other replica's first write (a pod, a status)"),
            ("newJobPodSeconds", "SIGKILL -> pod of a job created right after the kill"),
        ):
            rows.append(
                (
                    f"failover ({n} kills)",
                    f"{label}, median / worst s",
                    f"{s[key]['median']} / {s[key]['max']}",
                )
            )
        rows.append(("failover", "failover / one replica restarted at once (new job's pod, medians)",
                     str(s["ratioNewJobPodFailoverOverRestart"])))  # fmt: skip
        rows.append(
            (
                "failover",
                "violations (a second pod for an attempt, wrong attempts or outcome, a doubled transition)",
                str(len(fo["violations"])),
            )
        )
        rows.append(("failover", "load average (1 min) at the kills, median / worst",
                     f"{s['loadAverage1m']['median']} / {s['loadAverage1m']['max']}"))  # fmt: skip
        if fo.get("control"):
            c = fo["control"]
            figure = f"two replicas without election, {c['seconds']:g} s: transitions reported twice"
            rows.append(("failover control", figure, str(c["transitionsReportedTwice"])))
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return lines + goal_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default=",".join(GROUPS), help="comma-separated subset of " + ",".join(GROUPS)
    )
    parser.add_argument("--jobs", default="100,1000", help="operator: N FineTuneJobs per round")
    parser.add_argument("--nodes", default="128", help="operator: fake 8-GPU nodes")
    parser.add_argument("--idle-seconds", default="30", help="operator: idle window per state")
    parser.add_argument(
        "--sides",
        default="limit,ours,before,native,nativeFast",
        help="operator: the sides to measure (see bench/operator_scale.py)",
    )
    parser.add_argument(
        "--baseline-ref", default=BASELINE_REF, help="operator: the commit whose operator is 'before'"
    )
    parser.add_argument("--running-jobs", default="0", help="operator: steady state, R finished + R running")
    parser.add_argument("--burst-jobs", default="1000", help="operator: new jobs while R run")
    parser.add_argument(
        "--repeat", default="1", help="operator: rounds per N (the goals take the median; 3 to rank changes)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="operator: every goal of issue 12 (--jobs 100,1000,5000 --running-jobs 5000); an hour or more",
    )
    parser.add_argument("--kills", default="10", help="failover: times the leader is SIGKILLed")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(GROUPS)}")

    started = datetime.now(timezone.utc)
    info = machine()
    log: list[dict[str, Any]] = []
    ok = True
    if "operator" in groups:
        operator_args = [
            "operator_scale.py",
            "--jobs",
            args.jobs,
            "--nodes",
            args.nodes,
            "--idle-seconds",
            args.idle_seconds,
        ]
        if args.full:
            args.jobs, args.running_jobs = "100,1000,5000", "5000"
            operator_args[2] = args.jobs
        sides = [x for x in args.sides.split(",") if x.strip()]
        if "before" not in sides:
            args.baseline_ref = ""
        operator_args += ["--sides", ",".join(x for x in sides if x != "before")]
        if args.baseline_ref:
            operator_args += ["--baseline-ref", args.baseline_ref]
        operator_args += ["--running-jobs", args.running_jobs, "--burst-jobs", args.burst_jobs]
        operator_args += ["--repeat", args.repeat]
        ok &= run("operator", operator_args, log)
        ok &= run("watch cache", ["watch_cache.py"], log)
    if "kueue" in groups:
        ok &= run("kueue admission", ["kueue_admission.py"], log)
    if "trainer" in groups:
        ok &= run("trainer step", ["trainer_step.py"], log)
        ok &= run(
            "trainer pipeline", ["trainer_pipeline.py", "--out", str(RESULTS / "trainer_pipeline.json")], log
        )
        ok &= run("input pipeline", ["input_pipeline.py", "--out", str(RESULTS / "input_pipeline.json")], log)
    if "accuracy" in groups:
        ok &= run("time to accuracy", ["time_to_accuracy.py"], log)
    if "failover" in groups:
        ok &= run("failover", ["failover.py", "--kills", args.kills], log)

    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Benchmark summary",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with `python bench/run.py {command}` on {info['cpu']}, "
        f"{info['cores']} cores, Python {info['python']}, Paddle {info['paddle']} (load average "
        f"{info['loadAverageAtStart']} at start: a shared machine, so read ratios, not absolute times).",
        "",
        *summary_lines(groups),
        "",
        "| benchmark | command | exit code | seconds |",
        "|---|---|---|---|",
        *(f"| {e['name']} | `{e['command']}` | {e['exitCode']} | {e['seconds']} |" for e in log),
        "",
        "Details: the JSON files next to this one.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
