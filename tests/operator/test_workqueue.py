"""The keyed delaying work queue that serialises reconciles per job."""

import asyncio

from finetune_operator.workqueue import WorkQueue
from hypothesis import example, given, settings
from hypothesis import strategies as st


def test_due_order_dedup_and_earliest_wins():
    async def scenario():
        queue = WorkQueue()
        queue.add("late", 0.2)
        queue.add("now")
        queue.add("now")  # deduplicated
        queue.add("late", 0.05)  # the earlier due time wins
        assert len(queue) == 2
        first = await queue.get()
        queue.done(first)
        second = await asyncio.wait_for(queue.get(), 1)
        return first, second, len(queue)

    assert asyncio.run(scenario()) == ("now", "late", 0)


def test_a_key_is_never_processed_twice_at_once():
    async def scenario():
        queue = WorkQueue()
        queue.add("job")
        key = await queue.get()
        queue.add("job")  # an event arrives while the job is being reconciled
        blocked = asyncio.create_task(queue.get())
        await asyncio.sleep(0.05)
        assert not blocked.done()
        queue.done(key)
        return await asyncio.wait_for(blocked, 1)

    assert asyncio.run(scenario()) == "job"


def test_event_work_goes_before_a_backlog_of_timed_looks():
    """Issue 12: a burst of new jobs never waits behind progress reads that are overdue."""

    async def scenario():
        queue = WorkQueue()
        for i in range(50):
            queue.add(f"running-{i}", 0.0, priority=1)  # timed looks, all due
        await asyncio.sleep(0.01)
        queue.add("new-job", 0.0, priority=0)
        queue.add("running-3", 0.0, priority=0)  # a pod event on a running job: urgent now
        order = []
        for _ in range(4):
            key = await queue.get()
            queue.done(key)
            order.append(key)
        return order

    order = asyncio.run(scenario())
    assert set(order[:2]) == {"new-job", "running-3"}
    assert order[2:] == ["running-0", "running-1"]  # then the timed ones, longest due first


def test_a_timed_add_does_not_demote_an_urgent_key():
    async def scenario():
        queue = WorkQueue()
        queue.add("old", 0.0, priority=1)
        queue.add("job", 0.0, priority=0)
        queue.add("job", 5.0, priority=1)  # the pass's own requeue comes later
        await asyncio.sleep(0.01)
        first = await queue.get()
        return first

    assert asyncio.run(scenario()) == "job"


def test_during_a_burst_the_other_priorities_share_one_worker_and_get_all_after_it():
    """Issue 12: while new work arrives in a burst, routine and timed passes (statuses, Events,
    progress reads) run one at a time, never none; new work takes every worker; when the burst
    is over a waiting worker wakes by itself and the rest run in parallel."""

    async def scenario():
        queue = WorkQueue(quiet=0.2, share=1)
        for i in range(3):
            queue.add(f"routine-{i}", 0.0, priority=1)
        assert not queue.in_burst()
        queue.add("new-0")
        queue.add("new-1")  # two urgent adds in a row: a burst
        assert queue.in_burst()
        taken = [queue.take() for _ in range(4)]
        assert taken == ["new-0", "new-1", "routine-0", None]  # one routine pass at a time
        queue.done("routine-0")
        assert queue.take() == "routine-1"
        queue.add("new-2")
        assert queue.take() == "new-2"  # new work is never held back
        t0 = asyncio.get_running_loop().time()
        last = await asyncio.wait_for(queue.get(), 2)  # routine-1 still held: wait out the burst
        waited = asyncio.get_running_loop().time() - t0
        return last, waited, queue.in_burst()

    last, waited, burst = asyncio.run(scenario())
    assert last == "routine-2" and 0.1 < waited < 1.0 and not burst


def test_during_a_burst_timed_looks_wait_it_out_for_at_most_the_hold():
    """Issue 12: progress reads, deadlines and retries (the timed priority) do not run during a
    burst while routine passes still get their share; one runs once the burst is over, or once
    it has waited `hold` seconds past its due time if the burst goes on."""
    now = [0.0]
    queue = WorkQueue(clock=lambda: now[0], quiet=0.5, share=2, hold_from=2, hold=15.0)
    queue.add("read", 0.0, priority=2)
    assert queue.take() == "read"  # no burst: a timed look runs at once
    queue.done("read")
    queue.add("step", 0.0, priority=1)
    queue.add("read", 1.0, priority=2)
    now[0] = 1.0
    queue.add("new-0")
    queue.add("new-1")  # a burst
    assert [queue.take() for _ in range(4)] == ["new-0", "new-1", "step", None]  # the read waits
    queue.done("step")
    while now[0] < 15.8:  # the burst goes on: an urgent add every 0.4 s, the read waits
        now[0] = round(now[0] + 0.4, 1)
        queue.add(f"new-{now[0]}")
        assert queue.take() == f"new-{now[0]}"
        assert queue.take() is None, now[0]
    now[0] = round(now[0] + 0.4, 1)
    queue.add(f"new-{now[0]}")
    assert queue.in_burst() and now[0] >= 16.0 and queue.take() == f"new-{now[0]}"
    assert queue.take() == "read"  # 15 s past its due time: it runs in the burst, on the share
    queue.done("read")
    queue.add("read", 0.0, priority=2)
    assert queue.take() is None  # due again, the burst still on
    now[0] += 0.5  # the burst is over
    assert queue.take() == "read"


def test_a_pod_event_on_a_held_job_is_not_held():
    """A job whose timed look waits out a burst is worked at once when its pod reports an
    outcome (urgent) and on the routine share when its pod takes a step."""
    now = [0.0]
    queue = WorkQueue(clock=lambda: now[0], quiet=0.5, share=1, hold_from=2, hold=15.0)
    queue.add("a", 0.0, priority=2)
    queue.add("b", 0.0, priority=2)
    queue.add("new-0")
    queue.add("new-1")
    assert [queue.take(), queue.take(), queue.take()] == ["new-0", "new-1", None]
    queue.add("a", 0.0, priority=1)
    assert queue.take() == "a" and queue.take() is None
    queue.add("b", 0.0, priority=0)
    assert queue.take() == "b"


def test_an_add_wakes_one_waiting_worker_not_all_of_them():
    """A burst's watch events each add one key: that must wake one of the idle workers (and the
    one that takes it the next, in case more is due), not all sixteen of them to find nothing."""

    async def scenario():
        queue = WorkQueue()
        takes = [0]
        take = queue.take

        def counted():
            takes[0] += 1
            return take()

        queue.take = counted  # type: ignore[method-assign]
        workers = [asyncio.create_task(queue.get()) for _ in range(16)]
        await asyncio.sleep(0.01)
        takes[0] = 0
        queue.add("job")
        for _ in range(5):
            await asyncio.sleep(0)
        done = [w for w in workers if w.done()]
        woken = takes[0]
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return [w.result() for w in done], woken

    got, woken = asyncio.run(scenario())
    assert got == ["job"] and woken <= 2, woken


def test_sixteen_workers_drain_a_mixed_burst_one_pass_per_key_at_a_time():
    """Waking one worker per change loses no work: 16 workers drain 400 adds (new jobs, routine
    steps, timed looks due now and later, keys added again while held) during and after a
    burst, each key never held by two workers at once, and all of it is done."""

    async def scenario():
        queue = WorkQueue(quiet=0.02, share=2, hold_from=2, hold=0.05)
        held: set[str] = set()
        passes: list[str] = []
        clashes: list[str] = []

        async def worker():
            while True:
                key = await queue.get()
                if key in held:
                    clashes.append(key)
                held.add(key)
                await asyncio.sleep(0.001 * (hash(key) % 3))
                held.discard(key)
                passes.append(key)
                queue.done(key)

        workers = [asyncio.create_task(worker()) for _ in range(16)]
        keys = [f"job-{i % 120}" for i in range(400)]
        for i, key in enumerate(keys):
            queue.add(key, delay=(0.0, 0.0, 0.03, 0.1)[i % 4], priority=i % 3)
            if i % 40 == 0:
                await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (len(queue) or held) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        left = len(queue)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return set(passes), clashes, left

    passed, clashes, left = asyncio.run(scenario())
    assert passed == {f"job-{i}" for i in range(120)} and clashes == [] and left == 0


class _Model:
    """The queue's rules, written plainly (a scan of every key): what the heaps must agree with."""

    def __init__(self, quiet: float, share: int, hold: float = 0.0) -> None:
        self.quiet, self.share, self.hold = quiet, share, hold
        self.due: dict[str, float] = {}
        self.priority: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.urgent: list[float] = []  # the times of every urgent add

    def add(self, key: str, due: float, priority: int, now: float) -> None:
        self.due[key] = min(due, self.due.get(key, due))
        self.priority[key] = min(priority, self.priority.get(key, priority))
        if priority == 0:
            self.urgent.append(now)

    def burst(self, now: float) -> bool:
        return len(self.urgent) >= 2 and now - self.urgent[-2] < self.quiet

    def best(self, now: float) -> tuple[int, float] | None:
        ready = [(self.priority[k], d) for k, d in self.due.items() if d <= now and k not in self.active]
        best = min(ready, default=None)
        later = sum(1 for p in self.active.values() if p > 0)
        if not best or best[0] == 0 or not self.burst(now):
            return best
        # A burst: the share is taken, or the most urgent key is a timed look within its hold.
        held = later >= self.share or (best[0] >= 2 and now - best[1] < self.hold)
        return None if held else best


_ADD = st.tuples(
    st.just("add"),
    st.sampled_from("abcdef"),
    st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]),
    st.integers(0, 2),
)
_OPS = st.lists(
    st.one_of(
        _ADD,
        st.tuples(st.just("take")),
        st.tuples(st.just("done"), st.integers(0, 5)),
        st.tuples(st.just("discard"), st.sampled_from("abcdef")),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 0.25, 1.0])),
    ),
    min_size=20,  # long enough for bursts, held keys and time passing to meet
    max_size=80,
)


@given(ops=_OPS, share=st.integers(1, 2), hold=st.sampled_from([0.0, 0.3, 1.0]))
@example(  # a burst; a routine key held; a second routine key must wait
    ops=[("add", "a", 0.0, 0), ("add", "a", 0.0, 0), ("take",), ("add", "b", 0.0, 1)]
    + [("add", "c", 0.0, 1), ("take",), ("take",)],
    share=1,
    hold=0.0,
)
@example(  # a burst; a timed look waits it out, a routine one does not
    ops=[("add", "a", 0.0, 2), ("add", "b", 0.0, 0), ("add", "c", 0.0, 0), ("take",), ("take",)]
    + [("take",), ("add", "d", 0.0, 1), ("take",), ("tick", 1.0), ("take",)],
    share=2,
    hold=1.0,
)
@settings(max_examples=400, deadline=None)
def test_the_queue_takes_what_a_scan_of_every_key_would(ops: list[tuple], share: int, hold: float) -> None:
    """Generated sequences of adds (delays, priorities), takes, dones, discards and time passing:
    every take returns a key the plain rules allow (due, not held, the most urgent priority, then
    the longest due; during a burst no more than `share` keys that are not urgent held at once,
    and a timed look first due less than `hold` seconds ago waits), None only when none is, and
    the queue's length is the model's."""
    now = [0.0]
    queue = WorkQueue(clock=lambda: now[0], quiet=0.5, share=share, hold_from=2, hold=hold)
    model = _Model(0.5, share, hold)
    held: list[str] = []
    for op in ops:
        if op[0] == "add":
            _, key, delay, priority = op
            queue.add(key, delay, priority)
            model.add(key, now[0] + delay, priority, now[0])
        elif op[0] == "take":
            best = model.best(now[0])
            key = queue.take()
            if best is None:
                assert key is None
                continue
            assert key is not None and (model.priority[key], model.due[key]) == best
            model.active[key] = model.priority.pop(key)
            del model.due[key]
            held.append(key)
        elif op[0] == "done" and held:
            key = held.pop(op[1] % len(held))
            queue.done(key)
            model.active.pop(key)
        elif op[0] == "discard":
            queue.discard(op[1])
            model.due.pop(op[1], None)
            model.priority.pop(op[1], None)
        elif op[0] == "tick":
            now[0] += op[1]
        assert len(queue) == len(model.due) and queue.in_burst() == model.burst(now[0])
        for priority in range(3):
            assert queue.waiting(priority) == list(model.priority.values()).count(priority)
    # Everything left is taken in the end, once time has passed and the holders are done.
    for key in held:
        queue.done(key)
        model.active.pop(key)
    now[0] += 10
    left = set()
    while (key := queue.take()) is not None:
        left.add(key)
    assert left == set(model.due)
