"""The progress line: what the trainer prints once per epoch and the operator parses from the
tail of the pod's log."""

from __future__ import annotations

from finetune_contract import PROGRESS_PREFIX, format_progress, parse_last_progress


def test_round_trip_drops_absent_values():
    line = format_progress(3, 20, top1=0.5, loss=None)
    assert line.startswith(PROGRESS_PREFIX) and "\n" not in line
    assert parse_last_progress(line) == {"epoch": 3, "epochs": 20, "top1": 0.5}


def test_the_last_well_formed_line_wins():
    log = "\n".join(
        [
            format_progress(1, 5, top1=0.1),
            "[finetune] epoch 2/5: ...",
            format_progress(2, 5, top1=0.2),
            "epoch 3/5 |#####     | 3/10 [00:01<00:02]" + format_progress(3, 5)[:25],  # cut by the tail
        ]
    )
    assert parse_last_progress(log) == {"epoch": 2, "epochs": 5, "top1": 0.2}


def test_a_line_after_a_progress_bar_on_the_same_line_is_found():
    assert parse_last_progress("\r 40%|####  | " + format_progress(7, 20)) == {"epoch": 7, "epochs": 20}


def test_lines_no_trainer_writes_are_skipped():
    hostile = [
        PROGRESS_PREFIX + "[1, 2]",
        PROGRESS_PREFIX + '{"epochs": 3}',  # no epoch
        PROGRESS_PREFIX + '{"epoch": "3"}',
        PROGRESS_PREFIX + "[" * 100_000,
        PROGRESS_PREFIX + '{"epoch": ' + "9" * 5000 + "}",
    ]
    assert parse_last_progress(format_progress(1, 2) + "\n" + "\n".join(hostile)) == {"epoch": 1, "epochs": 2}
    assert parse_last_progress("\n".join(hostile)) is None
    assert parse_last_progress("") is None
