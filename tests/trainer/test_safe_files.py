"""No unpickling beyond plain data: every pickled file the trainer reads (pretrained weights, a
checkpoint's model and optimiser state, the best model) goes through statefile.load, which
refuses a hostile pickle with a clear message before anything in it runs."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from finetune_contract import EXIT_CHECKPOINT_REFUSED, EXIT_PRETRAINED_ERROR
from finetune_trainer import checkpoint, statefile, train

from tests.trainer.tiny_data import tiny_settings, write_list_dataset

TRAINER = Path(__file__).resolve().parents[2] / "trainer" / "finetune_trainer"


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the marker's existence shows the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class Shell:
    def __reduce__(self):
        return (subprocess.check_call, (["true"],))


def hostile_state(marker: Path) -> dict:
    """A state dict with real arrays and one value that runs code when unpickled."""
    return {"fc.weight": np.zeros([3, 512], "float32"), "fc.bias": Payload(marker)}


def _persistent(value) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.persistent_id = lambda obj: "ref" if isinstance(obj, str) else None
    pickler.dump(value)
    return buffer.getvalue()


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE = [
    ("os-mkdir", lambda m: pickle.dumps(hostile_state(m)), r"refers to posix\.mkdir"),
    ("eval", lambda m: pickle.dumps({"x": _Eval(m)}), r"refers to builtins\.eval"),
    ("subprocess", lambda m: pickle.dumps([Shell()]), r"refers to subprocess\.check_call"),
    ("other-class", lambda m: pickle.dumps(collections.Counter("ab")), r"refers to collections\.Counter"),
    ("array-subclass", lambda m: pickle.dumps(np.ma.masked_array([1.0])), r"refers to numpy\.ma\."),
    ("object-array", lambda m: pickle.dumps({"w": np.array([1, "x"], dtype=object)}), "array of object"),
    ("deep", lambda m: pickle.dumps(_deep(50)), "nested deeper than 16 levels"),
    ("persistent-id", lambda m: _persistent({"w": "x"}), "persistent reference"),
]


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('os').mkdir({str(self.marker)!r})",))


@pytest.mark.parametrize(("make", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_pickle_is_refused_and_nothing_in_it_runs(tmp_path, make, words):
    marker = tmp_path / "pwned"
    path = tmp_path / "file.pdparams"
    path.write_bytes(make(marker))
    with pytest.raises(statefile.UnsafeFileError) as refused:
        statefile.load(path)
    assert re.search(words, str(refused.value)), str(refused.value)
    assert str(refused.value).startswith(f"{path}: ")
    assert not marker.exists()


def test_what_an_optimizer_state_holds_round_trips(tmp_path):
    """Nested dicts of arrays and scalars (LR_Scheduler, master_weights), numpy scalars, tuples."""
    state = {
        "fc.weight::velocity_0": np.ones([3, 4], "float32"),
        "LR_Scheduler": {"last_epoch": 7, "last_lr": 0.0125},
        "master_weights": {"fc.weight": np.ones([3, 4], "float32")},
        "scale": np.float32(32768.0),
        "count": np.int64(3),
        "shape": (3, 4),
        "flags": [True, None, "x", b"y", 1.5],
    }
    written = statefile.save(state, tmp_path / "opt.pdopt")
    assert written == {
        "bytes": (tmp_path / "opt.pdopt").stat().st_size,
        "sha256": hashlib.sha256((tmp_path / "opt.pdopt").read_bytes()).hexdigest(),
    }
    loaded = statefile.load(tmp_path / "opt.pdopt", written)
    assert loaded.keys() == state.keys()
    assert loaded["LR_Scheduler"] == state["LR_Scheduler"] and loaded["shape"] == (3, 4)
    np.testing.assert_array_equal(loaded["master_weights"]["fc.weight"], state["master_weights"]["fc.weight"])
    assert loaded["scale"] == np.float32(32768.0) and loaded["flags"] == state["flags"]
    # Nothing is written that the loader would refuse.
    with pytest.raises(statefile.UnsafeFileError, match="cannot be saved: holds a Counter"):
        statefile.save({"x": collections.Counter()}, tmp_path / "bad.pdopt")


def test_files_written_by_paddle_save_are_read(tmp_path):
    import paddle
    from finetune_trainer.model import build_model

    model = build_model("ResNet18_vd", 3)
    paddle.save(model.state_dict(), str(tmp_path / "m.pdparams"))
    loaded = statefile.load(tmp_path / "m.pdparams")
    np.testing.assert_array_equal(loaded["fc.weight"], model.state_dict()["fc.weight"].numpy())


def test_the_trainer_unpickles_nothing_but_through_statefile():
    """A static check over the trainer's sources: no paddle.load, pickle.load(s) or Unpickler
    anywhere but statefile.py, so a new reader cannot bypass the safe path unnoticed. (Paddle's
    own loaders that unpickle too are named: ``paddle.jit.load`` reads a pickled ``.info`` file,
    ``paddle.static.load``/``load_program_state`` pickles; finetune-predict uses Paddle
    Inference, which reads the program and weights in C++ and unpickles nothing.)"""
    forbidden = re.compile(
        r"paddle\.load\(|pickle\.loads?\(|Unpickler\b|allow_pickle\s*=\s*True|\bdill\b"
        r"|jit\.load\(|static\.load\(|load_program_state\(|\bjoblib\b|torch\.load\("
    )
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(TRAINER.glob("*.py"))
        if path.name != "statefile.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line) and not line.lstrip().startswith(("#", '"', "'", "``"))
    ]
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------------------------------------
# Each file the trainer reads, in a run
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path):
    return write_list_dataset(tmp_path / "data", classes=3)


def test_hostile_pretrained_weights_fail_the_run_and_never_run(dataset, tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pdparams"
    weights.write_bytes(pickle.dumps(hostile_state(marker)))
    settings = tiny_settings(dataset, tmp_path / "out", training__epochs=1)
    settings.model.pretrained.path = str(weights)
    result = train.run(settings)
    assert result.exitCode == EXIT_PRETRAINED_ERROR
    assert f"{weights}: not a Paddle state dict (.pdparams): it refers to posix.mkdir" in result.message
    assert not marker.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (checkpoints of epochs 1 and 2, a best model)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_list_dataset(root / "data", classes=3)
    result = train.run(tiny_settings(data, root / "out"))
    assert result.exitCode == 0, result.message
    return data, root / "out"


@pytest.mark.parametrize("name", [checkpoint.MODEL, checkpoint.OPTIMIZER])
def test_a_hostile_checkpoint_file_is_refused_even_with_a_matching_record(finished, tmp_path, capsys, name):
    """Someone who can write the volume can also rewrite state.json's sizes and hashes: the
    unpickler alone must stop the payload. The checkpoint is refused with a warning saying so,
    and the run goes on from the one before."""
    data, original = finished
    out = tmp_path / "out"
    shutil.copytree(original, out)
    newest = out / "checkpoints" / "epoch-0002"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(
        hostile_state(marker) if name == checkpoint.MODEL else {"LR_Scheduler": Payload(marker)}
    )
    (newest / name).write_bytes(payload)
    state = json.loads((newest / "state.json").read_text())
    state["files"][name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (newest / "state.json").write_text(json.dumps(state))

    result = train.run(tiny_settings(data, out))
    assert result.exitCode == 0, result.message
    assert result.resumedFromEpoch == 1
    log = capsys.readouterr().err
    assert f"warning: checkpoint epoch-0002 cannot be used: {newest / name}: it refers to posix.mkdir" in log
    assert "(refused, nothing was run)" in log
    assert not marker.exists()


def test_a_hostile_best_model_is_refused_at_export(finished, tmp_path):
    data, original = finished
    out = tmp_path / "out"
    shutil.copytree(original, out)
    marker = tmp_path / "pwned"
    (out / "best_model" / "model.pdparams").write_bytes(pickle.dumps(hostile_state(marker)))
    result = train.run(tiny_settings(data, out))  # resumes at the end: only the export is left
    assert result.resumedFromEpoch == 2
    assert result.exitCode == EXIT_CHECKPOINT_REFUSED and result.reason == "CheckpointRefused"
    assert "the best model cannot be exported: " in result.message
    assert "best_model/model.pdparams: it refers to posix.mkdir" in result.message
    assert not marker.exists()
