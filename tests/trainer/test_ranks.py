"""The pieces of several-process training that need no process group: the state-dict skeleton
sent from rank 0, the dataset fingerprint, and the first-failure rule for termination messages.
(The collectives themselves run for real in test_multinode.py.)"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import paddle
from finetune_contract import TrainerResult, decode_result
from finetune_trainer import ranks
from finetune_trainer.data import index_dataset
from finetune_trainer.report import write_result

from tests.trainer.tiny_data import write_list_dataset


def test_a_state_dict_skeleton_is_json_and_rebuilds_with_its_arrays():
    tree = {
        "fc.weight@@velocity_0": paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "conv1.bn._mean@@velocity_0": np.ones([4], dtype=np.float16),
        "step": np.int64(7),
        "LR_Scheduler": {"last_epoch": 12, "last_lr": 0.0125},
        "master_weights": {"fc.weight": np.zeros([2, 3], dtype=np.float32)},
        "names": ["a", "b"],
    }
    arrays: list[np.ndarray] = []
    skeleton = ranks._describe(tree, arrays)
    assert json.loads(json.dumps(skeleton)) == skeleton  # plain JSON, nothing pickled
    assert [a.dtype for a in arrays] == [np.float32, np.float16, np.float32]
    rebuilt = ranks._rebuild(skeleton, [paddle.to_tensor(a) for a in arrays])
    np.testing.assert_array_equal(
        rebuilt["fc.weight@@velocity_0"].numpy(), tree["fc.weight@@velocity_0"].numpy()
    )
    assert rebuilt["conv1.bn._mean@@velocity_0"].numpy().dtype == np.float16
    assert rebuilt["master_weights"]["fc.weight"].shape == [2, 3]
    assert (rebuilt["step"], rebuilt["LR_Scheduler"], rebuilt["names"]) == (
        7,
        tree["LR_Scheduler"],
        ["a", "b"],
    )


def test_the_dataset_fingerprint_sees_content_not_where_it_is_mounted(tmp_path):
    data = write_list_dataset(tmp_path / "a", classes=3)
    moved = shutil.copytree(data, tmp_path / "b")
    first = ranks.data_fingerprint(index_dataset(data, "list", 3), str(data))
    assert ranks.data_fingerprint(index_dataset(moved, "list", 3), str(moved)) == first
    lines = (moved / "val_list.txt").read_text().splitlines()
    path, label = lines[0].rsplit(" ", 1)
    (moved / "val_list.txt").write_text("\n".join([f"{path} {(int(label) + 1) % 3}", *lines[1:]]) + "\n")
    assert ranks.data_fingerprint(index_dataset(moved, "list", 3), str(moved)) != first


def test_the_first_failure_of_a_pod_keeps_the_termination_message(tmp_path):
    message = tmp_path / "termination-log"
    cause = TrainerResult(exitCode=3, reason="DataError", message="bad image")
    stopped = TrainerResult(exitCode=143, reason="Interrupted", message="received SIGTERM")
    started = time.time() - 5  # both processes started before either failed

    write_result(cause, None, str(message), first_failure_since=started)
    write_result(stopped, None, str(message), first_failure_since=started)
    assert decode_result(message.read_text()).reason == "DataError"

    # A message from before this process started (a reused path outside a pod) is replaced.
    os.utime(message, (started - 60, started - 60))
    write_result(stopped, None, str(message), first_failure_since=started)
    assert decode_result(message.read_text()).reason == "Interrupted"

    # Without the rule (one process; or success) the result always replaces the message.
    write_result(TrainerResult(exitCode=0, reason="Completed"), None, str(message))
    assert decode_result(message.read_text()).reason == "Completed"
    fresh = tmp_path / "fresh"
    write_result(cause, None, str(fresh), first_failure_since=started)
    assert decode_result(fresh.read_text()).reason == "DataError"
