"""What the fast reconciler tests share: a job in the fake API, a reconciler on it with a fake clock,
and passes run until the job settles."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from finetune_contract import encode_result
from finetune_operator.config import OperatorConfig
from finetune_operator.controller import Reconciler
from finetune_operator.metrics import Metrics

from tests.contract.sample import SAMPLE_RESULT
from tests.operator import jobs
from tests.operator.fake_kube import FakeKube

NS, NAME = "team-a", "flowers"
CONFIG = OperatorConfig(backoff_base_seconds=10, backoff_max_seconds=300, progress_poll_seconds=30)
SUCCESS = encode_result(SAMPLE_RESULT)


def pod(attempt: int, name: str = NAME) -> str:
    return f"{name}-attempt-{attempt}"


def new_job(name: str = NAME, **spec: Any) -> dict[str, Any]:
    """The unit tests' FineTuneJob with spec sections replaced, as the fake API stores it."""
    job = jobs.job(**spec)
    job["metadata"] = {"name": name, "namespace": NS}
    return job


class World:
    """A job in the fake API, the reconciler and its metrics, and a fake clock."""

    busy = False  # whether the work queue says new jobs pile up (Reconciler.busy)

    def __init__(self, config: OperatorConfig = CONFIG, **spec: Any) -> None:
        self.config = config
        self.kube = FakeKube()
        self.clock = self.kube.clock
        self.metrics = Metrics()
        self.restart()
        self.kube.add_job(new_job(**spec))

    def configure(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)
        self.restart()

    def restart(self) -> None:
        """A new operator process: nothing in memory survives but the metrics registry."""
        self.reconciler = Reconciler(self.kube, self.config, self.metrics, clock=self.clock)
        self.reconciler.busy = lambda: self.busy

    def reconcile(self, name: str = NAME) -> float | None:
        return self.reconciler.reconcile(NS, name)

    def settle(self, name: str = NAME, limit: int = 12) -> float | None:
        """Reconcile until a pass writes nothing (the kubelet removes deleted pods in between)."""
        for _ in range(limit):
            before = len(self.kube.writes)
            again = self.reconcile(name)
            self.kube.terminate()
            if len(self.kube.writes) == before:
                return again
        raise AssertionError(f"{name} never settled: writes {self.kube.writes[-8:]}")

    @property
    def status(self) -> dict[str, Any]:
        return copy.deepcopy(self.kube.status(NS, NAME))

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.kube.events]

    # The pod of an attempt, driven by the world.
    def run(self, attempt: int) -> None:
        self.kube.run(NS, pod(attempt))

    def succeed(self, attempt: int) -> None:
        self.kube.finish(NS, pod(attempt), 0, SUCCESS)

    def fail(self, attempt: int, code: int = 143, message: str = "") -> None:
        self.kube.finish(NS, pod(attempt), code, message)
