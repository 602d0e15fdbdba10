"""The benchmark's limit (bench/bare_controller.py) sends exactly one pod per job and one status
patch per finished job, whatever the order and repetition of watch events; its status patch is
the operator's own Succeeded patch, which the benchmark recognises as done. Also: the figures are
written from a report, and a phase's recorder ignores the namespace's other jobs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from finetune_contract import encode_result
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import render_pod
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import plots
from bench.bare_controller import BareController, orphan_pod, running_status, success_patch
from bench.operator_scale import RESULT, Recorder, ftj_done, job_manifest


def _job(name: str, uid: str = "u-1") -> dict[str, Any]:
    job = job_manifest(name)
    job["metadata"].update(namespace="limit", uid=uid, generation=1, resourceVersion="7")
    return job


def _pod(job: dict[str, Any], phase: str) -> dict[str, Any]:
    pod = render_pod(job, 1, OperatorConfig())
    status: dict[str, Any] = {"phase": phase}
    if phase == "Succeeded":
        terminated = {"exitCode": 0, "reason": "Completed", "message": encode_result(RESULT)}
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    pod["status"] = status
    return pod


class Recording(BareController):
    """The bare controller with its two requests recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), "limit", OperatorConfig(), threads=4)
        self.sent: list[tuple[str, str]] = []

    def _create(self, job: dict[str, Any]) -> None:
        self.sent.append(("create", job["metadata"]["name"]))

    def _succeed(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        self.sent.append(("patch", job["metadata"]["name"]))


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["job", "pod"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["ADDED", "MODIFIED", "LISTED", "DELETED"]),
        st.sampled_from(["Pending", "Running", "Succeeded"]),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=EVENTS)
def test_one_pod_per_job_and_one_patch_per_succeeded_pod_of_a_known_job(events: list) -> None:
    bare = Recording()
    jobs_seen: set[str] = set()
    finished: set[str] = set()
    for what, name, kind, phase in events:
        job = _job(name)
        if what == "job":
            bare.on_job(0.0, kind, job)
            if kind != "DELETED":
                jobs_seen.add(name)
        else:
            bare.on_pod(0.0, kind, _pod(job, phase))
            if kind != "DELETED" and phase == "Succeeded" and name in jobs_seen:
                finished.add(name)
    bare.close()
    creates = [n for verb, n in bare.sent if verb == "create"]
    patches = [n for verb, n in bare.sent if verb == "patch"]
    assert sorted(creates) == sorted(jobs_seen)
    assert sorted(patches) == sorted(finished)


def test_a_finished_job_gets_no_pod() -> None:
    bare = Recording()
    job = _job("done")
    job["status"] = {"phase": "Succeeded"}
    bare.on_job(0.0, "LISTED", job)
    bare.close()
    assert bare.sent == []


def test_the_success_patch_is_the_operators_and_makes_the_job_done() -> None:
    job = _job("a")
    patch = success_patch(job, _pod(job, "Succeeded"))
    assert {
        "phase",
        "reason",
        "message",
        "conditions",
        "metrics",
        "progress",
        "completionTime",
    } <= set(patch)
    assert patch["phase"] == "Succeeded" and patch["metrics"]["top1"] == RESULT.top1
    assert patch.get("nextAttemptTime") is None  # never set on a Running job: a diff leaves it out
    done = copy.deepcopy(job)
    done["status"] = {**running_status(job, "a-attempt-1", "2026-01-01T00:00:00Z"), **patch}
    assert ftj_done(done)
    conditions = {c["type"]: c["status"] for c in patch["conditions"]}
    assert conditions["Succeeded"] == "True" and conditions["Running"] == "False"


def test_an_orphan_pod_is_the_operators_pod_without_its_owner() -> None:
    job = _job("a")
    ours = render_pod(job, 1, OperatorConfig())
    orphan = orphan_pod(job, OperatorConfig())
    assert "ownerReferences" not in orphan["metadata"]
    assert orphan["spec"] == ours["spec"] and orphan["metadata"]["labels"] == ours["metadata"]["labels"]


def test_a_phase_recorder_ignores_the_other_jobs_of_its_namespace() -> None:
    rec = Recorder("finetune.paddle.dev/job-name", ftj_done, only=frozenset({"job-00005"}))
    for name in ("job-00001", "job-00005"):
        rec.on_job(1.0, "LISTED", {"metadata": {"name": name}, "status": {"phase": "Running"}})
        rec.on_pod(2.0, "ADDED", {"metadata": {"labels": {"finetune.paddle.dev/job-name": name}}})
    assert set(rec.tracks) == {"job-00005"}
    assert rec.count("running") == 1 and rec.count("pod_created") == 1


def test_figures_are_written_from_a_report(tmp_path: Path) -> None:
    side = {
        "load": {"start": 1.0, "end": 2.0},
        "samples": {"podCreated": [0.1, 0.2, 0.5], "propagation": [0.3, 0.4]},
        "burst": {"requests": {"byKind": {"create pod": 100, "patch job status": 200}}},
        "idleRunning": {"requestsPerMinute": 600.0, "load": {"start": 1.0, "end": 1.0}},
    }
    report = {
        "machine": "test CPU",
        "commit": "abc",
        "rounds": [{"n": 100, "limit": side, "ours": side, "native": side, "nativeFast": side}],
        "steady": {
            "running": 50,
            "burst": 10,
            "ours": {"burstWhileRunning": side, "idleRunning": {**side["idleRunning"], "running": 50}},
        },
    }
    paths = plots.write(report, tmp_path)
    assert [p.name for p in paths] == ["operator_latency.png", "operator_requests.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
