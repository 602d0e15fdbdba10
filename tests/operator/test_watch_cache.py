"""The reconciler on the watch cache (finetune_operator.cache) against the fake API.

The cache is fed from snapshots of the fake API's state, the way kopf's watch feeds it: in order,
never going back, but lagging behind by a random number of changes before every pass (a watch
that is late), and caught up only when a pass had nothing to do (as the late watch event then
triggers the next pass). Every crash-point scenario is played so with many seeds, and with
crashes at every write where the restarted operator's cache starts empty (kopf's first LIST not
delivered yet). The invariants are the crash points' (one pod per attempt, never two that may
run, failures counted once, the same end) and the cache must not cost the API server reads on
the way: a lifecycle with a watch that keeps up sends no GET or LIST at all.
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from finetune_operator.cache import LAST_APPLIED, CachedKube, newer, selector_terms
from finetune_operator.controller import Reconciler
from finetune_operator.gang import observe_gang, rank_of
from finetune_operator.kueue import kueue_gated, kueue_managed, kueue_stop
from finetune_operator.metrics import Metrics
from finetune_operator.pod import pod_selector, render_attempt, render_master_config
from finetune_operator.pod_state import observe_pod
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.operator.crash_scenarios import SCENARIOS, Scenario
from tests.operator.fake_kube import Crash, FakeKube, api_error
from tests.operator.reconcile_kit import CONFIG, NAME, NS, SUCCESS, World, new_job
from tests.operator.test_crash_points import KEYS, attempt_of, play

SEEDS = range(8)


class CountingKube:
    """The fake API, counting the reads that reach it."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.reads: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.kube, name)
        if name in ("get_job", "list_pods", "list_jobs", "pod_log_tail", "get_workload", "can_i"):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.reads[name] = self.reads.get(name, 0) + 1
                return attr(*args, **kwargs)

            return counted
        return attr


class Watch:
    """What the API server has shown so far, as snapshots; the cache is fed up to one of them."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.snapshots: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
        self.fed = -1
        self.seen: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})

    def snapshot(self) -> None:
        if self.snapshots:
            # A test step that edits an object in place (a label) gets the new resourceVersion the
            # API server would give it.
            for now, before in zip((self.kube.jobs, self.kube.pods), self.snapshots[-1], strict=True):
                for key, obj in now.items():
                    old = before.get(key)
                    same = (
                        old is not None
                        and old["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
                    )
                    if same and old != obj:
                        obj["metadata"]["resourceVersion"] = self.kube._next_rv()
        state = (copy.deepcopy(self.kube.jobs), copy.deepcopy(self.kube.pods))
        if not self.snapshots or self.snapshots[-1] != state:
            self.snapshots.append(state)

    def behind(self) -> bool:
        return self.fed < len(self.snapshots) - 1

    def feed(self, cache: CachedKube, upto: int) -> int:
        """Deliver the events up to snapshot `upto`; returns how many told the cache something."""
        new = 0
        for index in range(self.fed + 1, min(upto, len(self.snapshots) - 1) + 1):
            jobs, pods = self.snapshots[index]
            for kind, now, before in (("job", jobs, self.seen[0]), ("pod", pods, self.seen[1])):
                for key, obj in before.items():
                    if key not in now or now[key]["metadata"]["uid"] != obj["metadata"]["uid"]:
                        new += cache.observe(kind, "DELETED", obj)
                for obj in now.values():
                    new += cache.observe(kind, "MODIFIED", obj)
            self.seen = (jobs, pods)
            self.fed = index
        return new

    def catch_up(self, cache: CachedKube) -> None:
        self.snapshot()
        self.feed(cache, len(self.snapshots) - 1)


@dataclass
class Run:
    created: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    stale: int = 0
    passes: int = 0
    writes_per_pass: list[int] = field(default_factory=list)


def play_cached(scenario: Scenario, seed: int, crash: tuple[int, int, str] | None = None) -> Run:
    """Play the scenario with the reconciler on a lagging cache (and with `crash` = (pass,
    write, when), dying there once; the new process's cache starts empty)."""
    rng = random.Random(seed)
    world = World(**scenario.spec)
    kube = world.kube
    out = Run()
    create = kube.create_pod

    def create_checked(pod: dict[str, Any]) -> dict[str, Any]:
        # A pod may be asked for under the name of one the cache does not show (the API server
        # refuses it: 409); one that is created must be the only attempt that may run (the ranks
        # of one attempt run together).
        attempt = attempt_of(pod["metadata"]["name"])
        running = [n for n in kube.active_pods(NS, NAME) if attempt_of(n) != attempt]
        created = create(pod)
        if running:
            out.problems.append(f"{pod['metadata']['name']} created while {running} may still run")
        return created

    kube.create_pod = create_checked  # type: ignore[method-assign]
    watch = Watch(kube)

    def start() -> tuple[CachedKube, Reconciler]:
        cache = CachedKube(kube)
        return cache, Reconciler(cache, world.config, Metrics(), clock=world.clock, live=kube)

    cache, reconciler = start()
    # The job as created is what the first step leaves (a queue label, ...): no pass runs before it.
    for step in scenario.steps:
        step(world)
        watch.snapshot()
        for _ in range(40):
            if (NS, NAME) not in kube.jobs:
                break
            # A late watch: deliver up to a random snapshot not yet delivered.
            watch.feed(cache, rng.randint(watch.fed, len(watch.snapshots) - 1))
            if crash is not None and crash[0] == out.passes:
                kube.crash_at(crash[1], crash[2])
            before = len(kube.writes)
            behind = watch.behind()
            try:
                again = reconciler.reconcile(NS, NAME)
            except Crash:
                out.stale += reconciler.stale_passes
                cache, reconciler = start()
                watch.fed, watch.seen = -1, ({}, {})
                again = "crashed"
            out.passes += 1
            made = len(kube.writes) - before
            out.writes_per_pass.append(made)
            phase = kube.status(NS, NAME).get("phase") if (NS, NAME) in kube.jobs else None
            if again is None and phase not in ("Succeeded", "Failed", "Suspended", None):
                out.problems.append(f"pass {out.passes} left the job {phase} with no timed look again")
            kube.terminate()
            watch.snapshot()
            if made == 0 and again != "crashed":
                if not behind:
                    break
                watch.catch_up(cache)  # the late event arrives: look again
        else:
            out.problems.append(f"the job never settled after step {step}")
    out.stale += reconciler.stale_passes
    out.final = {k: kube.status(NS, NAME).get(k) for k in KEYS} if (NS, NAME) in kube.jobs else None
    out.events = [e["reason"] for e in kube.events]
    out.created = list(kube.created)
    if out.final and out.final["phase"] in ("Succeeded", "Failed") and kube.active_pods(NS, NAME):
        out.problems.append(f"finished with pods that may still run: {kube.active_pods(NS, NAME)}")
    return out


def compare(reference: Any, case: Run) -> list[str]:
    problems = list(case.problems)
    if len(set(case.created)) != len(case.created):
        problems.append(f"a pod was created twice: {case.created}")
    if case.created != reference.created:
        problems.append(f"pods {case.created}, on fresh reads {reference.created}")
    if case.final != reference.final:
        problems.append(f"ended as {case.final}, on fresh reads {reference.final}")
    # A status write refused as stale may follow Events the fresh pass then posts again under
    # its newer version's names: each transition is reported, at worst twice in a row.
    collapsed = [r for i, r in enumerate(case.events) if i == 0 or case.events[i - 1] != r]
    if collapsed != [r for i, r in enumerate(reference.events) if i == 0 or reference.events[i - 1] != r]:
        problems.append(f"events {case.events}, on fresh reads {reference.events}")
    return problems


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_lagging_cache_ends_every_life_as_fresh_reads_do(scenario: Scenario) -> None:
    reference = play(scenario)
    assert not reference.problems
    failures = []
    stale = 0
    for seed in SEEDS:
        case = play_cached(scenario, seed)
        stale += case.stale
        problems = compare(reference, case)
        if problems:
            failures.append(f"seed {seed}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)


def test_the_lag_does_make_passes_go_back_to_the_api_server() -> None:
    """The generated lags reach the guarded decisions (else the test above proves little)."""
    stale = sum(play_cached(s, seed).stale for s in SCENARIOS for seed in range(3))
    assert stale >= len(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_crash_at_any_write_with_an_empty_cache_after_it_changes_nothing(scenario: Scenario) -> None:
    reference = play(scenario)
    clean = play_cached(scenario, 0)
    failures = []
    for number, writes in enumerate(clean.writes_per_pass):
        for index in range(writes):
            for when in ("before", "after"):
                case = play_cached(scenario, 0, (number, index, when))
                problems = compare(reference, case)
                if problems:
                    failures.append(f"crash at pass {number}, {when} write {index}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------- the cache itself
def test_a_lifecycle_on_a_watch_that_keeps_up_sends_no_get_and_no_list() -> None:
    world = World()
    counting = CountingKube(world.kube)
    cache = CachedKube(counting)  # type: ignore[arg-type]
    reconciler = Reconciler(cache, world.config, Metrics(), clock=world.clock, live=counting)  # type: ignore[arg-type]
    watch = Watch(world.kube)
    for step in ("created", "run", "succeed"):
        if step == "run":
            world.run(1)
        elif step == "succeed":
            world.succeed(1)
        watch.catch_up(cache)
        for _ in range(5):
            before = len(world.kube.writes)
            reconciler.reconcile(NS, NAME)
            watch.catch_up(cache)
            if len(world.kube.writes) == before:
                break
    assert world.kube.status(NS, NAME)["phase"] == "Succeeded"
    assert world.kube.created == [f"{NAME}-attempt-1"]
    assert reconciler.stale_passes == 0
    # The running pod's progress is read from its log (one read per poll): nothing else.
    assert set(counting.reads) <= {"pod_log_tail"}, counting.reads


def _job(rv: str, uid: str = "u1", **status: Any) -> dict[str, Any]:
    meta = {"namespace": NS, "name": NAME, "uid": uid, "resourceVersion": rv}
    return {"metadata": meta, "spec": {}, "status": status}


def _pod(name: str, rv: str, job: str = NAME, uid: str = "") -> dict[str, Any]:
    labels = dict(selector_terms(pod_selector(job)))
    meta = {
        "namespace": NS,
        "name": name,
        "uid": uid or f"uid-{name}",
        "resourceVersion": rv,
        "labels": labels,
    }
    return {"metadata": meta}


def test_the_watch_event_of_the_operators_own_write_brings_nothing_new() -> None:
    kube = FakeKube()
    kube.add_job(_job("1"))
    cache = CachedKube(kube)
    assert cache.observe("job", None, kube.job(NS, NAME)) is True  # the first LIST
    written = cache.patch_job_status(NS, NAME, {"phase": "Pending"})
    assert cache.observe("job", "MODIFIED", written) is False  # our own write, seen already
    # Another status write whose watch event comes before its answer: nothing but the status.
    ahead = kube.patch_job_status(NS, NAME, {"phase": "Running"})
    assert cache.observe("job", "MODIFIED", ahead) is False
    assert cache.get_job(NS, NAME)["status"]["phase"] == "Running"  # stored all the same
    cache.observe("job", "MODIFIED", written)  # older: ignored
    kube.update_spec(NS, NAME, runPolicy={"suspend": True})  # someone else's change
    assert cache.observe("job", "MODIFIED", kube.job(NS, NAME)) is True


def test_an_event_that_brings_nothing_new_is_not_serialised(monkeypatch) -> None:
    """The watch events of the operator's own writes (a pod it created, a status it wrote: 2 of
    the 5 or so events of a job's burst) and late events of deleted objects are dropped before
    the cache compresses anything; an event with news is stored as before."""
    kube = FakeKube()
    kube.add_job(_job("1"))
    cache = CachedKube(kube)
    built: list[str] = []
    entry = cache._entry
    monkeypatch.setattr(cache, "_entry", lambda kind, obj: built.append(kind) or entry(kind, obj))
    assert cache.observe("job", None, kube.job(NS, NAME))
    written = cache.patch_job_status(NS, NAME, {"phase": "Pending"})
    built.clear()
    assert not cache.observe("job", "MODIFIED", written)  # our own write
    assert not cache.observe("job", "MODIFIED", _job("0"))  # older
    cache.observe("pod", "ADDED", _pod("a-1", "7"))
    cache.observe("pod", "DELETED", _pod("a-1", "9"))
    assert not cache.observe("pod", "MODIFIED", _pod("a-1", "8"))  # late, of a deleted pod
    assert built == ["pod"]  # only the pod's first event was news
    kube.update_spec(NS, NAME, runPolicy={"suspend": True})
    assert cache.observe("job", "MODIFIED", kube.job(NS, NAME)) and built == ["pod", "job"]


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = CachedKube(FakeKube())
    fat = _job("1")
    fat["metadata"].update(name="fat", managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}])
    assert cache.observe("job", None, fat)
    assert "managedFields" not in cache.get_job(NS, "fat")["metadata"]  # not kept: never read
    assert cache.observe("job", "MODIFIED", _job("20", phase="Running"))
    assert not cache.observe("job", "MODIFIED", _job("19", phase="Pending"))
    assert not cache.observe("job", "MODIFIED", _job("20", phase="Pending"))
    assert cache.get_job(NS, NAME)["status"]["phase"] == "Running"
    # A new job of the same name (another uid) replaces the old one whatever the numbers say.
    assert cache.observe("job", "ADDED", _job("5", uid="u2"))
    assert cache.get_job(NS, NAME)["metadata"]["uid"] == "u2"


def test_a_deleted_object_is_not_revived_by_a_late_answer_or_event() -> None:
    cache = CachedKube(FakeKube())
    cache.observe("pod", "ADDED", _pod("a-1", "7"))
    assert cache.observe("pod", "DELETED", _pod("a-1", "9"))
    assert not cache.observe("pod", "MODIFIED", _pod("a-1", "8"))
    assert cache.list_pods(NS, pod_selector(NAME)) == []
    # Deleting a pod of that name with another uid leaves the newer pod alone.
    cache.observe("pod", "ADDED", _pod("a-1", "12", uid="new"))
    assert not cache.observe("pod", "DELETED", _pod("a-1", "9"))
    assert [p["metadata"]["uid"] for p in cache.list_pods(NS, pod_selector(NAME))] == ["new"]


def test_the_cached_job_reads_as_the_job_less_what_is_never_read() -> None:
    """The cache keeps each object as compressed JSON: a read gives back the job exactly (floats,
    text beyond ASCII, nested lists), less managedFields and kubectl's copy of the manifest, and
    every read is a copy of its own."""
    cache = CachedKube(FakeKube())
    job = _job("7", phase="Running")
    job["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(job), "team": "vision \u00e9quipe"}
    job["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    job["status"].update(
        message="top-1 \u2192 \U0001f600", progress={"top1": 0.1 + 0.2, "losses": [1e-9, 3.5]}
    )
    assert cache.observe("job", "ADDED", copy.deepcopy(job))
    read = cache.get_job(NS, NAME)
    expected = copy.deepcopy(job)
    del expected["metadata"]["managedFields"], expected["metadata"]["annotations"][LAST_APPLIED]
    assert read == expected
    read["status"]["progress"]["losses"].append(0.0)
    read["metadata"]["annotations"]["team"] = "changed"
    assert cache.get_job(NS, NAME) == expected
    # Another annotation (not the status) is a change worth a pass; the same status again is not.
    job["metadata"].update(resourceVersion="8", annotations={"team": "nlp"})
    assert cache.observe("job", "MODIFIED", copy.deepcopy(job))
    job["metadata"]["resourceVersion"] = "9"
    assert not cache.observe("job", "MODIFIED", copy.deepcopy(job))


def test_the_kinds_dictionary_shrinks_alike_jobs_and_any_job_reads_back_exactly() -> None:
    """The first job kept becomes the jobs' preset dictionary: a job like it costs a fraction of
    what it costs compressed alone, and jobs unlike it (another shape, other text) still read
    back exactly; the pods' dictionary is their own."""
    cache = CachedKube(FakeKube())
    tiny = {"metadata": {"namespace": NS, "name": "tiny", "uid": "u-tiny", "resourceVersion": "1"}}
    assert cache.observe("job", "ADDED", copy.deepcopy(tiny))
    jobs = []
    for i in range(5):
        job = _job(str(10 + i), phase="Running")
        job["metadata"].update(name=f"job-{i}", uid=f"u-{i}")
        job["status"]["message"] = f"epoch {i}: loss {1.0 / (i + 1)!r} \u00e9"
        jobs.append(job)
        assert cache.observe("job", "ADDED", copy.deepcopy(job))
    for job in jobs:
        assert cache.get_job(NS, job["metadata"]["name"]) == job
    assert cache.get_job(NS, "tiny") == tiny

    alike = CachedKube(FakeKube())
    for job in jobs:
        alike.observe("job", "ADDED", copy.deepcopy(job))
    entry = alike._jobs.objects[(NS, "job-4")]
    alone = zlib.compress(json.dumps(entry.read(), separators=(",", ":")).encode(), 1)
    assert len(entry.packed) < len(alone) / 3, (len(entry.packed), len(alone))
    pod = {"metadata": {"namespace": NS, "name": "p", "uid": "u-p", "labels": {}}, "status": {}}
    alike.observe("pod", "ADDED", copy.deepcopy(pod))
    assert alike._pods.objects[(NS, "p")].zdict != entry.zdict
    assert alike.list_pods(NS, "a=b") == [] and alike._pods.objects[(NS, "p")].read() == pod


def test_pods_are_listed_by_their_job_and_the_rest_of_the_selector() -> None:
    cache = CachedKube(FakeKube())
    for name, job in (("a-1", "a"), ("a-2", "a"), ("b-1", "b")):
        cache.observe("pod", "ADDED", _pod(name, "3", job=job))
    other = _pod("x", "3", job="a")
    other["metadata"]["namespace"] = "elsewhere"
    cache.observe("pod", "ADDED", other)
    names = [p["metadata"]["name"] for p in cache.list_pods(NS, pod_selector("a"))]
    assert names == ["a-1", "a-2"]
    moved = _pod("a-2", "4", job="b")  # a label changed: the index follows
    cache.observe("pod", "MODIFIED", moved)
    assert [p["metadata"]["name"] for p in cache.list_pods(NS, pod_selector("b"))] == ["a-2", "b-1"]
    assert cache.sizes() == (0, 4)
    with pytest.raises(ValueError, match="only key=value"):
        cache.list_pods(NS, "app in (a,b)")


def test_a_job_the_watch_has_not_shown_is_read_from_the_api_server_once() -> None:
    kube = FakeKube()
    kube.add_job(_job("1"))
    counting = CountingKube(kube)
    cache = CachedKube(counting)  # type: ignore[arg-type]
    cache.get_job(NS, NAME)
    cache.get_job(NS, NAME)
    assert counting.reads == {"get_job": 1}
    with pytest.raises(Exception) as gone:
        cache.get_job(NS, "nobody")
    assert getattr(gone.value, "status", None) == 404


def test_resource_versions_compare_as_numbers() -> None:
    assert newer("10", "9") and not newer("9", "10") and not newer("9", "9")
    assert newer("1", None) and not newer(None, "1")
    assert newer("abc", "abd")  # not numbers: different is newer


def test_a_stale_status_write_is_refused_and_redone_on_fresh_reads() -> None:
    """The cache shows an old job (the answer to the operator's last write was lost): the pass's
    status write carries that version, is refused, and the pass is redone on fresh reads, so the
    failure is counted once."""
    world = World()
    kube = world.kube
    cache = CachedKube(kube)
    reconciler = Reconciler(cache, world.config, Metrics(), clock=world.clock, live=kube)
    cache.observe("job", None, kube.job(NS, NAME))
    reconciler.reconcile(NS, NAME)  # attempt 1's pod, written through
    world.run(1)
    world.fail(1, 143)
    cache.observe("pod", "MODIFIED", kube.pod(NS, f"{NAME}-attempt-1"))
    old = copy.deepcopy(kube.job(NS, NAME))
    reconciler.reconcile(NS, NAME)  # judges attempt 1: failedAttempts 1
    assert kube.status(NS, NAME)["failedAttempts"] == 1
    cache._jobs.objects[(NS, NAME)] = cache._entry("job", old)  # as if that answer never came back
    reconciler.reconcile(NS, NAME)
    assert kube.status(NS, NAME)["failedAttempts"] == 1
    assert reconciler.stale_passes >= 1
    rejected = [w for w in kube.writes if w.verb == "patch_status"]
    assert rejected, "the status was written"


def test_a_conflict_on_fresh_reads_is_an_error_for_the_work_queue() -> None:
    kube = FakeKube()
    kube.add_job(_job("1"))

    def refuse(*_: Any, **__: Any) -> None:
        raise api_error(409, "Conflict", "the object has been modified")

    world = World()
    world.kube.patch_job_status = refuse  # type: ignore[method-assign]
    reconciler = Reconciler(
        CachedKube(world.kube), world.config, Metrics(), clock=world.clock, live=world.kube
    )
    with pytest.raises(Exception) as conflict:
        reconciler.reconcile(NS, NAME)
    assert getattr(conflict.value, "status", None) == 409
    assert reconciler.stale_passes == 1


def test_the_sweeps_relist_drops_what_was_deleted_during_a_watch_gap() -> None:
    """kopf reports no deletions after a relist (410 Gone): the sweep's lists make the cache hold
    what the API server holds, and the reconciler then judges the vanished pod as missing."""
    world = World()
    kube = world.kube
    cache = CachedKube(kube)
    reconciler = Reconciler(cache, world.config, Metrics(), clock=world.clock, live=kube)
    cache.observe("job", None, kube.job(NS, NAME))
    reconciler.reconcile(NS, NAME)
    world.run(1)
    cache.observe("pod", "MODIFIED", kube.pod(NS, f"{NAME}-attempt-1"))
    other = _pod("elsewhere-1", "3")
    other["metadata"]["namespace"] = "elsewhere"
    cache.observe("pod", "ADDED", other)
    reconciler.reconcile(NS, NAME)
    assert kube.status(NS, NAME)["phase"] == "Running"
    kube.remove_pod(NS, f"{NAME}-attempt-1")  # during a watch gap: no DELETED event
    assert cache.sizes() == (1, 2)
    assert [j["metadata"]["name"] for j in cache.relist(NS)] == [NAME]
    assert cache.sizes() == (1, 1)  # the other namespace's pod is not this list's to judge
    reconciler.reconcile(NS, NAME)
    assert kube.status(NS, NAME)["reason"] == "Retrying"
    assert "PodMissing" in world.reasons()


def test_the_relist_keeps_what_came_after_its_snapshot_and_drops_what_it_shows_gone() -> None:
    """A sweep during a burst: jobs and pods created while its lists were on their way are newer
    than the lists' snapshots and stay cached (dropping them sent every such job's next pass to
    the API server: 2,159 GETs in one steady-state run); an older pod the snapshot lacks was
    deleted during a watch gap and goes."""
    kube = FakeKube()
    cache = CachedKube(kube)
    kube.add_job(new_job())
    cache.observe("job", None, kube.job(NS, NAME))
    gone = _pod("deleted-unseen-1", "1")
    cache.observe("pod", "ADDED", gone)  # never in the fake API: gone before the lists
    snapshot = kube.list_snapshot

    def lists_then_a_burst(kind: str, *args: Any) -> tuple[list[Any], str]:
        listed = snapshot(kind, *args)
        if kind == "job":  # a job created after the jobs' list, seen by the job stream
            cache.observe("job", "ADDED", kube.add_job(new_job("later")))
        else:  # its pod, created (and written through) after the pods' list
            pod = render_attempt(kube.job(NS, "later"), 1, CONFIG)[0]
            cache.create_pod(pod)
        return listed

    kube.list_snapshot = lists_then_a_burst  # type: ignore[method-assign]
    held = cache._jobs.objects[(NS, NAME)]
    assert sorted(j["metadata"]["name"] for j in cache.relist(NS)) == [NAME]
    assert cache._jobs.objects[(NS, NAME)] is held  # unchanged: no second copy was made
    assert sorted(name for _, name in cache._jobs.objects) == [NAME, "later"]
    assert [p["metadata"]["name"] for p in cache.list_pods(NS, pod_selector("later"))] == ["later-attempt-1"]
    assert (NS, "deleted-unseen-1") not in cache._pods.objects


def test_the_relist_keeps_slim_copies_and_reads_the_same_as_the_watch() -> None:
    """The sweep's relist slims each item as its page arrives (the whole answer as full objects
    was 964 MiB at 10,000 jobs); what it keeps reads exactly as what the watch keeps."""
    world = World()
    world.reconcile()
    world.run(1)
    pod = world.kube.pod(NS, f"{NAME}-attempt-1")
    pod["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {}}]
    assert len(pod["spec"]["containers"]) == 1
    listed, watched = CachedKube(world.kube), CachedKube(world.kube)
    assert [j["metadata"]["name"] for j in listed.relist(NS)] == [NAME]
    watched.observe("job", None, world.kube.job(NS, NAME))
    watched.observe("pod", None, pod)
    for cache in (listed, watched):
        kept = next(iter(cache._pods.objects.values())).read()
        assert kept["spec"].keys() <= {"nodeName", "schedulingGates"}
        assert "managedFields" not in kept["metadata"]
    selector = pod_selector(NAME)
    assert listed.list_pods(NS, selector) == watched.list_pods(NS, selector)
    assert listed.get_job(NS, NAME) == watched.get_job(NS, NAME)


def test_a_pod_deleted_during_a_watch_gap_is_noticed_without_waiting_for_the_sweep() -> None:
    """A running pod the cache still shows has no log (404): the pass asks the API server. A
    pod being deleted that the cache shows past its deletion deadline: the same."""
    world = World()
    kube = world.kube
    cache = CachedKube(kube)
    reconciler = Reconciler(cache, world.config, Metrics(), clock=world.clock, live=kube)
    cache.observe("job", None, kube.job(NS, NAME))
    reconciler.reconcile(NS, NAME)
    world.run(1)
    cache.observe("pod", "MODIFIED", kube.pod(NS, f"{NAME}-attempt-1"))
    reconciler.reconcile(NS, NAME)
    kube.remove_pod(NS, f"{NAME}-attempt-1")  # no DELETED event
    world.clock.advance(world.config.progress_poll_seconds)
    reconciler.reconcile(NS, NAME)
    assert kube.status(NS, NAME)["reason"] == "Retrying"
    assert reconciler.stale_passes == 1

    # Attempt 2 runs; the user suspends the job; its pod is deleted and goes while the watch is down.
    world.clock.advance(60)
    reconciler.reconcile(NS, NAME)
    world.run(2)
    cache.observe("pod", "MODIFIED", kube.pod(NS, f"{NAME}-attempt-2"))
    kube.update_spec(NS, NAME, runPolicy={"suspend": True})
    cache.observe("job", "MODIFIED", kube.job(NS, NAME))
    reconciler.reconcile(NS, NAME)  # deletes the pod (graceful: it is on a node)
    cache.observe("pod", "MODIFIED", kube.pod(NS, f"{NAME}-attempt-2"))
    kube.terminate()  # gone, unseen
    kube.update_spec(NS, NAME, runPolicy={"suspend": False})
    cache.observe("job", "MODIFIED", kube.job(NS, NAME))
    assert reconciler.reconcile(NS, NAME) == 2.0  # waits for the pod the cache shows
    world.clock.advance(20)  # past its deletion deadline (the fake's grace period is none)
    reconciler.reconcile(NS, NAME)
    assert kube.job_pods(NS, NAME).keys() == {(3, 0)}  # the next attempt, after a fresh look


_POD_STATUSES = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
        "podIP": st.just("10.0.0.7"),
        "reason": st.sampled_from(["Evicted", "DeadlineExceeded", "NodeLost"]),
        "conditions": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["PodScheduled", "DisruptionTarget", "Ready"]),
                    "status": st.sampled_from(["True", "False"]),
                    "reason": st.sampled_from(["Unschedulable", "PreemptionByScheduler", ""]),
                    "lastTransitionTime": st.just("2026-01-01T00:00:05Z"),
                }
            ),
            max_size=2,
        ),
        "containerStatuses": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.just("trainer"),
                    "state": st.sampled_from(
                        [
                            {"waiting": {"reason": "ErrImagePull", "message": "no"}},
                            {"running": {"startedAt": "2026-01-01T00:00:09Z"}},
                            {"terminated": {"exitCode": 0, "message": SUCCESS}},
                            {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                        ]
                    ),
                }
            ),
            max_size=1,
        ),
    },
)


@given(
    status=_POD_STATUSES,
    node=st.sampled_from([None, "gpu-1"]),
    gated=st.booleans(),
    nodes=st.integers(1, 3),
    deleting=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_the_cached_pod_reads_as_the_pod_does(
    status: dict[str, Any], node: str | None, gated: bool, nodes: int, deleting: bool
) -> None:
    """The cache keeps of a pod's spec only nodeName and schedulingGates (the rest is most of a
    pod's memory): whatever the pod's state, everything the reconciler concludes from it (its
    outcome, rank, gang, Kueue's gate and stop, the master's address) is the same on the cached
    copy as on the pod the API server holds, and the copy holds none of the containers."""
    job = new_job(resources={"gpus": 1, "nodes": nodes})
    job["metadata"]["uid"] = "job-uid"
    for pod in render_attempt(job, 1, CONFIG):
        pod["metadata"].update(uid=f"uid-{pod['metadata']['name']}", resourceVersion="3")
        pod["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        pod["metadata"]["managedFields"] = [{"manager": "kubelet"}]
        if deleting:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        if gated:
            pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
        if node:
            pod["spec"]["nodeName"] = node
        pod["status"] = copy.deepcopy(status)
        cache = CachedKube(FakeKube())
        assert cache.observe("pod", "ADDED", pod)
        (cached,) = cache.list_pods(NS, pod_selector(NAME))
        assert "containers" not in cached["spec"] and "managedFields" not in cached["metadata"]
        assert cached["status"] == pod["status"]
        assert observe_pod(cached) == observe_pod(pod)
        assert (rank_of(cached), kueue_gated(cached), kueue_managed(cached)) == (
            rank_of(pod),
            kueue_gated(pod),
            kueue_managed(pod),
        )
        assert kueue_stop(cached) == kueue_stop(pod)
        assert observe_gang({0: cached}, 1) == observe_gang({0: pod}, 1)
        if status.get("podIP"):
            assert render_master_config(job, 1, cached) == render_master_config(job, 1, pod)
