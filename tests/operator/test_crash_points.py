"""Crash points: for every API write of every reconcile pass of every scenario (crash_scenarios.py),
the operator dies right before it and, separately, right after it; a fresh reconciler then
continues on what the fake API holds. Systematic: the crash-free run of a scenario lists the
writes of each pass, and every (pass, write, before/after) is one case.

Invariants, checked on every case:
* one pod per rank of each attempt: no pod name is ever created twice, none is left uncreated
  (a crash between two ranks' creations), attempts are numbered 1..n with none skipped, and a
  pod is never created while a pod of another attempt of the job may still run;
* no pod left behind: a finished job has no pod that may still run;
* failures counted exactly once: failedAttempts ends where the crash-free run's does;
* no transition lost or reported twice: the case's Events are the crash-free run's, in order (a
  pass repeated after a crash posts its Events again under the same names, and the API server
  keeps one), and the job ends in the same phase, reason and counts;
* no job stuck: it reaches its expected end; a pass over a job that is not finished or
  suspended always asks to be looked at again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from finetune_operator.metrics import Metrics

from tests.operator.crash_scenarios import SCENARIOS, Scenario
from tests.operator.fake_kube import Crash
from tests.operator.reconcile_kit import CONFIG, NAME, NS, World

KEYS = ("phase", "reason", "attempts", "endedAttempts", "failedAttempts", "podName", "metrics")


@dataclass
class Run:
    """What one run of a scenario did."""

    writes_per_pass: list[int] = field(default_factory=list)
    crashed: str = ""
    problems: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    verbs: set[str] = field(default_factory=set)


def play(scenario: Scenario, crash: tuple[int, int, str] | None = None, busy: bool = False) -> Run:
    """Play the scenario, reconciling after every step until a pass writes nothing; with `crash`
    = (pass, write, when), the process dies there once and a new one takes over. `busy`: as in a
    burst of new jobs (a new job's first pass only creates its pod)."""
    world = World(replace(CONFIG, **scenario.config), **scenario.spec)
    world.busy = busy
    kube = world.kube
    out = Run()
    create = kube.create_pod

    def create_checked(pod: dict[str, Any]) -> dict[str, Any]:
        attempt = attempt_of(pod["metadata"]["name"])
        running = [n for n in kube.active_pods(NS, NAME) if attempt_of(n) != attempt]
        if running:
            out.problems.append(f"{pod['metadata']['name']} created while {running} may still run")
        return create(pod)

    kube.create_pod = create_checked
    passes = 0
    for step in scenario.steps:
        step(world)
        for _ in range(20):
            if (NS, NAME) not in kube.jobs:
                break
            if crash is not None and crash[0] == passes:
                kube.crash_at(crash[1], crash[2])
            before = len(kube.writes)
            try:
                again = world.reconcile()
            except Crash as died:
                out.crashed = str(died)
                world.metrics = Metrics()
                world.restart()
                again = "crashed"
            passes += 1
            made = len(kube.writes) - before
            out.writes_per_pass.append(made)
            out.verbs.update(w.verb for w in kube.writes[before:])
            phase = kube.status(NS, NAME).get("phase") if (NS, NAME) in kube.jobs else None
            if again is None and phase not in ("Succeeded", "Failed", "Suspended", None):
                out.problems.append(f"pass {passes} left the job {phase} with no timed look again")
            kube.terminate()
            if made == 0 and again != "crashed":
                break
        else:
            out.problems.append(f"the job never settled after step {step}")
    if crash is not None and not out.crashed:
        out.problems.append(f"the crash {crash} never happened")
    out.final = {k: kube.status(NS, NAME).get(k) for k in KEYS} if (NS, NAME) in kube.jobs else None
    out.events = [e["reason"] for e in kube.events]
    out.created = list(kube.created)
    if out.final and out.final["phase"] in ("Succeeded", "Failed") and kube.active_pods(NS, NAME):
        out.problems.append(f"finished with pods that may still run: {kube.active_pods(NS, NAME)}")
    return out


def attempt_of(pod_name: str) -> int:
    """The attempt in a pod's name (<job>-attempt-<n>, or <job>-attempt-<n>-rank-<r>)."""
    return int(re.search(r"-attempt-(\d+)(-rank-\d+)?$", pod_name).group(1))  # type: ignore[union-attr]


def crash_points(reference: Run) -> Iterator[tuple[int, int, str]]:
    for number, writes in enumerate(reference.writes_per_pass):
        for index in range(writes):
            for when in ("before", "after"):
                yield number, index, when


def check(scenario: Scenario, reference: Run, case: Run) -> list[str]:
    problems = list(case.problems)
    if len(set(case.created)) != len(case.created):
        problems.append(f"a pod was created twice: {case.created}")
    attempts = sorted({attempt_of(n) for n in case.created})
    if [attempt_of(n) for n in case.created] != sorted(attempt_of(n) for n in case.created):
        problems.append(f"attempts out of order: {case.created}")
    if attempts != list(range(1, len(attempts) + 1)):
        problems.append(f"attempts skipped: {case.created}")
    if case.created != reference.created:
        problems.append(f"pods {case.created}, without the crash {reference.created}")
    if case.final != reference.final:
        problems.append(f"ended as {case.final}, without the crash {reference.final}")
    if case.events != reference.events:
        problems.append(f"events {case.events}, without the crash {reference.events}")
    return problems


BUSY = pytest.mark.parametrize("busy", [False, True], ids=["quiet", "burst"])


@BUSY
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_scenario_ends_where_it_should_without_a_crash(scenario: Scenario, busy: bool) -> None:
    run = play(scenario, busy=busy)
    assert not run.problems, run.problems
    if scenario.phase is None:
        assert run.final is None, f"the job should have been deleted: {run.final}"
        return
    assert run.final is not None
    assert (run.final["phase"], run.final["reason"]) == (scenario.phase, scenario.reason)
    assert (run.final["failedAttempts"] or 0) == scenario.failed
    assert sum(run.writes_per_pass) > 0


@BUSY
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_crash_before_or_after_any_write_changes_nothing(scenario: Scenario, busy: bool) -> None:
    reference = play(scenario, busy=busy)
    failures = []
    cases = 0
    for crash in crash_points(reference):
        cases += 1
        problems = check(scenario, reference, play(scenario, crash, busy))
        if problems:
            failures.append(f"crash at pass {crash[0]}, {crash[2]} write {crash[1]}: " + "; ".join(problems))
    assert cases > 0
    broken = f"{len(failures)} of {cases} crash points broke an invariant:\n"
    assert not failures, broken + "\n".join(failures)


def test_the_crash_points_cover_every_kind_of_write() -> None:
    verbs: set[str] = set()
    total = 0
    for scenario in SCENARIOS:
        reference = play(scenario)
        verbs |= reference.verbs
        total += 2 * sum(reference.writes_per_pass)
    assert verbs == {
        "create_pod",
        "delete_pod",
        "patch_status",
        "delete_job",
        "event",
        "create_configmap",
        "create_podgroup",
    }
    print(f"{len(SCENARIOS)} scenarios, {total // 2} writes, {total} crash points")
    assert total >= 400


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_burst_changes_when_a_new_job_is_recorded_not_what_it_shows(scenario: Scenario) -> None:
    """In a burst a new job's first pass only creates its pod; a later pass records it. Every
    scenario tells the same story (Events in order, pods, the end) either way."""
    quiet, burst = play(scenario), play(scenario, busy=True)
    assert not burst.problems, burst.problems
    assert (burst.events, burst.created, burst.final) == (quiet.events, quiet.created, quiet.final)
