"""The job's world (nodes x processes per node, from the settings) against what the launcher
started (``PADDLE_TRAINERS_NUM``), checked before joining the process group."""

from __future__ import annotations

import pytest
from finetune_contract import EXIT_BAD_SETTINGS, WorldSettings
from finetune_trainer import setup
from finetune_trainer.state import TrainerFailure


@pytest.mark.parametrize(("started", "nodes", "per_node"), [("2", 3, 8), ("16", 2, 4), ("", 2, 1)])
def test_a_launcher_that_started_another_count_stops_with_a_settings_error(
    monkeypatch, started, nodes, per_node
):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", started)
    with pytest.raises(TrainerFailure) as info:
        setup.setup_distributed(WorldSettings(nodes, per_node))
    assert info.value.exit_code == EXIT_BAD_SETTINGS
    message = str(info.value)
    assert message.startswith(f"world: the job asks for {nodes} node(s) x {per_node} process(es)")
    assert f"but {int(started or 1)} process(es) were started" in message


@pytest.mark.parametrize("world", [WorldSettings(), WorldSettings(1, 1), None])
def test_one_process_as_asked_or_unset_runs_alone(monkeypatch, world):
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    assert setup.setup_distributed(world) == setup.Distributed()
