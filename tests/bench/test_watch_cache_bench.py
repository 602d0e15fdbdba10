"""bench/watch_cache.py: its generated events are distinct real objects, and every side it
measures reads back what it was given."""

from __future__ import annotations

import json
from pathlib import Path

from finetune_operator.cache import _slim

from bench import watch_cache


def test_the_events_are_n_finished_and_n_running_jobs_each_with_its_own_pod() -> None:
    events = [(kind, json.loads(text)) for kind, text in watch_cache.events(3)]
    assert [kind for kind, _ in events] == ["job", "pod"] * 6
    jobs = [obj for kind, obj in events if kind == "job"]
    pods = [obj for kind, obj in events if kind == "pod"]
    assert [j["status"]["phase"] for j in jobs] == ["Succeeded"] * 3 + ["Running"] * 3
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"] * 3 + ["Running"] * 3
    assert len({o["metadata"]["uid"] for _, o in events}) == 12
    for job, pod in zip(jobs, pods, strict=True):
        assert pod["metadata"]["ownerReferences"][0]["name"] == job["metadata"]["name"]
        assert pod["metadata"]["name"].startswith(job["metadata"]["name"] + "-attempt-")


def test_every_side_reads_back_the_slim_object(tmp_path: Path) -> None:
    source = list(watch_cache.events(2))
    events = [(kind, json.loads(text)) for kind, text in source]
    for side in watch_cache.SIDES:
        store = watch_cache.fill(side, source)
        for kind, obj in events:
            meta = obj["metadata"]
            job = meta["labels"]["finetune.paddle.dev/job-name"] if kind == "pod" else None
            read = store.read(kind, meta["namespace"], meta["name"], job)
            assert read == _slim(kind, obj), (side, kind)
    out = tmp_path / "wc.json"
    assert watch_cache.main(["--jobs", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["side"] for row in report["sides"]] == ["dicts", "json", "ours"]
    assert all(row["objects"] == 20 and row["heldMiB"] >= 0 for row in report["sides"])
