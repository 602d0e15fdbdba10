"""The keyed delaying work queue that serialises reconciles per job."""

import asyncio

from finetune_operator.workqueue import WorkQueue


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
