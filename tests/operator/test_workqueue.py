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
