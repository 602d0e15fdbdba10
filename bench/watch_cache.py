"""The operator's watch cache: memory per job and CPU per event, against holding the same slim
objects as Python dicts (how the cache kept them before 2026-12-03) and against their compact JSON
(the information itself, as the API server sends it).

    .venv/bin/python bench/watch_cache.py [--jobs 5000] [--out bench/results/watch_cache.json]

The objects are real: a FineTuneJob finished, one running and a running pod, as the local
cluster's API server returned them during `bench/operator_scale.py` (bench/data/); the finished
pod is the running one with kwok's terminated state. Each copy gets its own name, uid and
resourceVersion and is parsed from its own JSON text, as kopf parses every watch event.
`--jobs N` holds N finished and N running jobs with a pod each (issue 12's goal 5a: 5,000 + 5,000).
Memory is what tracemalloc counts (Python's allocations, not RSS); CPU is process time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune_operator.api import LABEL_JOB  # noqa: E402
from finetune_operator.cache import CachedKube, _slim  # noqa: E402

from bench.proc_sampler import cpu_model  # noqa: E402

DATA = ROOT / "bench" / "data"


def texts() -> dict[str, str]:
    """The captured objects as JSON text, and the finished pod made from the running one."""
    names = ("job_done", "job_run", "pod_run")
    out = {name: (DATA / f"watch_cache_{name}.json").read_text() for name in names}
    pod = json.loads(out["pod_run"])
    pod["status"]["phase"] = "Succeeded"
    (trainer,) = pod["status"]["containerStatuses"]
    trainer.update(ready=False, started=False)
    started = trainer["state"]["running"]["startedAt"]
    result = {"top1": 0.8125, "top5": 0.96875, "bestEpoch": 2, "epochsRun": 2, "durationSeconds": 42}
    trainer["state"] = {
        "terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(result),
                       "startedAt": started, "finishedAt": started}
    }  # fmt: skip
    out["pod_done"] = json.dumps(pod)
    return out


def events(n: int) -> Iterator[tuple[str, str]]:
    """(kind, JSON text) of n finished and n running jobs, each followed by its pod."""
    source = texts()
    names = {kind: json.loads(source[kind])["metadata"] for kind in source}
    for i in range(2 * n):
        state = "done" if i < n else "run"
        for kind in ("job", "pod"):
            meta = names[f"{kind}_{state}"]
            job = meta["name"] if kind == "job" else meta["labels"][LABEL_JOB]
            text = source[f"{kind}_{state}"].replace(job, f"job-{i:05d}")
            text = text.replace(meta["uid"], str(uuid.uuid4())).replace(
                f'"resourceVersion": "{meta["resourceVersion"]}"', f'"resourceVersion": "{10_000 + i}"'
            )
            yield kind, text


class DictStore:
    """The reference: slim copies held as Python objects, a deep copy for every read."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def observe(self, kind: str, _type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(kind, meta["namespace"], meta["name"])] = copy.deepcopy(_slim(kind, obj))

    def read(self, kind: str, namespace: str, name: str, _job: str | None) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind, namespace, name)])


class JsonText:
    """The information itself: each slim object as compact JSON text (no index, no reads)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], str] = {}

    def observe(self, kind: str, _type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        text = json.dumps(_slim(kind, obj), separators=(",", ":"))
        self.objects[(kind, meta["namespace"], meta["name"])] = text

    def read(self, kind: str, namespace: str, name: str, _job: str | None) -> dict[str, Any]:
        return json.loads(self.objects[(kind, namespace, name)])


class Ours:
    def __init__(self) -> None:
        self.cache = CachedKube(live=None)  # type: ignore[arg-type]  # no write, no miss

    def observe(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        self.cache.observe(kind, event_type, obj)

    def read(self, kind: str, namespace: str, name: str, job: str | None) -> dict[str, Any]:
        if kind == "job":
            return self.cache.get_job(namespace, name)
        (pod,) = self.cache.list_pods(namespace, f"{LABEL_JOB}={job}")  # as a pass reads its pods
        return pod


SIDES: dict[str, Callable[[], Any]] = {"dicts": DictStore, "json": JsonText, "ours": Ours}


def fill(side: str, source: list[tuple[str, str]]) -> Any:
    """A store of `side` fed with every event, each parsed as it comes (as kopf does)."""
    store = SIDES[side]()
    for kind, text in source:
        store.observe(kind, "ADDED", json.loads(text))
    return store


def measure(side: str, n: int) -> dict[str, Any]:
    source = list(events(n))
    keys = []
    for kind, text in source:
        meta = json.loads(text)["metadata"]
        keys.append((kind, meta["namespace"], meta["name"], (meta.get("labels") or {}).get(LABEL_JOB)))
    # Memory: what the store holds once every event was parsed, handed over and dropped.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = fill(side, source)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del store
    # CPU, without tracemalloc: feeding a fresh store, less parsing (the same for every side).
    gc.collect()
    t0 = time.process_time()
    for _kind, text in source:
        json.loads(text)
    parse = time.process_time() - t0
    t0 = time.process_time()
    store = fill(side, source)
    put = time.process_time() - t0 - parse
    t0 = time.process_time()
    for kind, namespace, name, job in keys:
        store.read(kind, namespace, name, job)
    read = time.process_time() - t0
    objects = len(source)
    return {
        "side": side,
        "objects": objects,
        "heldBytes": held,
        "heldMiB": round(held / 2**20, 1),
        "bytesPerJobWithItsPod": round(2 * held / objects),
        "parseMicrosecondsPerObject": round(1e6 * parse / objects, 1),
        "putMicrosecondsPerObject": round(1e6 * put / objects, 1),
        "readMicrosecondsPerObject": round(1e6 * read / objects, 1),
    }


def _ratio(ours: float, other: float) -> float | None:
    return round(ours / other, 3) if other > 0 else None  # too few objects to time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="N finished + N running jobs (default 5000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "watch_cache.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = [measure(side, args.jobs) for side in SIDES]
    by = {row["side"]: row for row in rows}
    figures = {"held": "heldBytes", "put": "putMicrosecondsPerObject", "read": "readMicrosecondsPerObject"}
    ratios = {
        other: {name: _ratio(by["ours"][key], by[other][key]) for name, key in figures.items()}
        for other in ("dicts", "json")
    }
    report = {
        "machine": cpu_model(),
        "loadAverage": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)},
        "jobs": 2 * args.jobs,
        "sides": rows,
        "oursOver": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{2 * args.jobs} jobs and their pods on {report['machine']}, load {report['loadAverage']}")
    print("| side | held | per job + pod | put per object | read per object |")
    print("|---|---|---|---|---|")
    for row in rows:
        held, per = row["heldMiB"], row["bytesPerJobWithItsPod"]
        put, read = row["putMicrosecondsPerObject"], row["readMicrosecondsPerObject"]
        print(f"| {row['side']} | {held} MiB | {per} B | {put} us | {read} us |")
    for other, ratio in ratios.items():
        print(f"ours / {other}: held {ratio['held']}, put {ratio['put']}, read {ratio['read']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
