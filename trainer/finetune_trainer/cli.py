"""``finetune-train``: the trainer's command line.

    finetune-train --settings job.yaml --set training.epochs=5 --set dataset.root=/data

Settings are layered: the defaults of ``finetune_contract.TrainerSettings``, then ``--settings``
(a YAML or JSON file), then ``--settings-json`` (what the operator passes), then each ``--set
dotted.key=value`` (the value is read as YAML: ``5``, ``0.01``, ``1e-4``, ``true``, ``[1,1,1,1,1]``).
Invalid settings exit with ``EXIT_BAD_SETTINGS`` and a message naming the field; the exit code
is otherwise the result's (see ``finetune_contract``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from finetune_contract import EXIT_BAD_SETTINGS, SettingsError, TrainerResult, TrainerSettings, exit_reason

from .report import write_result


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` as a string; accept it as a float like YAML 1.2 and JSON do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where}: not valid YAML/JSON: {exc}") from exc


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _apply_set(data: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set {assignment!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{key}: {part} is not an object")
        node = child
    value = _parse_yaml(text, f"--set {key}") if text.strip() else ""
    node[parts[-1]] = value


def load_settings(
    settings_file: str | None = None, settings_json: str | None = None, assignments: list[str] | None = None
) -> TrainerSettings:
    """Layer the settings sources (see the module docstring) and validate them."""
    data: dict[str, Any] = {}
    if settings_file:
        path = Path(settings_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"--settings {path}: cannot read: {exc.strerror or exc}") from exc
        loaded = _parse_yaml(text, str(path))
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: must hold a mapping of settings")
        _merge(data, loaded or {})
    if settings_json:
        try:
            loaded = json.loads(settings_json)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"--settings-json: not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError("--settings-json: must be a JSON object")
        _merge(data, loaded)
    for assignment in assignments or []:
        _apply_set(data, assignment)
    return TrainerSettings.from_dict(data)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-train",
        description="Finetune a PaddleClas ResNet_vd classifier (pretrained weights, FC stripped, "
        "freeze strategy, cosine schedule); see finetune_contract.TrainerSettings for every setting.",
    )
    parser.add_argument("--settings", metavar="FILE", help="settings file (YAML or JSON)")
    parser.add_argument("--settings-json", metavar="TEXT", help="settings as one JSON object")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. training.epochs=5 (repeatable)",
    )
    parser.add_argument("--print-settings", action="store_true", help="print the effective settings and exit")
    return parser


def _result_path_hint(argv: list[str] | None) -> str | None:
    """Where to report a settings error: output.resultPath if it can be read from the arguments."""
    args, _ = _parser().parse_known_args(argv)
    try:
        settings = load_settings(None, args.settings_json, [a for a in args.set if a.startswith("output.")])
        return settings.output.resultPath
    except SettingsError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.settings, args.settings_json, args.set)
    except SettingsError as exc:
        message = f"invalid settings: {exc}"
        print(f"finetune-train: {message}", file=sys.stderr)
        path = _result_path_hint(argv)
        if path:
            failed = TrainerResult(
                exitCode=EXIT_BAD_SETTINGS, reason=exit_reason(EXIT_BAD_SETTINGS), message=message
            )
            write_result(failed, None, path)  # no output.dir to trust: the termination message only
        return EXIT_BAD_SETTINGS
    if args.print_settings:
        print(json.dumps(settings.to_dict(), indent=2, sort_keys=True))
        return 0
    from .train import run  # Paddle is imported only once the settings are valid

    result = run(settings)
    summary = {
        "reason": result.reason,
        "top1": result.top1,
        "top5": result.top5,
        "bestEpoch": result.bestEpoch,
        "epochsRun": result.epochsRun,
        "durationSeconds": result.durationSeconds,
    }
    print(f"finetune-train: {json.dumps(summary)}", file=sys.stderr)
    return result.exitCode if result.exitCode is not None else 1


if __name__ == "__main__":
    sys.exit(main())
