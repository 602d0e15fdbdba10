"""What the images take from the project: its extras' requirements and its own source files,
read from ``pyproject.toml`` so that a moved or added package folder needs no change here, and
narrowed to what an image's Dockerfile copies."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]

# Never part of a build's input: bytecode, build output, editable-install metadata.
_SKIP_PARTS = {"__pycache__", "build", "dist"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def pyproject(root: Path = ROOT) -> dict[str, Any]:
    return tomllib.loads((root / "pyproject.toml").read_text())


def requirements(extra: str, root: Path = ROOT) -> list[str]:
    """The requirement strings installing ``.[extra]`` brings in, the project's own extras
    (``paddle-finetune-operator[trainer]``) expanded, sorted and without duplicates."""
    project = pyproject(root)["project"]
    name = _normalize(project["name"])
    extras = project.get("optional-dependencies", {})
    found: set[str] = set(project.get("dependencies", []))
    pending, done = [extra], set()
    while pending:
        current = pending.pop()
        if current in done:
            continue
        if current not in extras:
            raise ValueError(f"pyproject.toml: [project.optional-dependencies] has no extra {current!r}")
        done.add(current)
        for requirement in extras[current]:
            match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*\[([^\]]+)\]\s*", requirement)
            if match and _normalize(match.group(1)) == name:
                pending += [e.strip() for e in match.group(2).split(",")]
            else:
                found.add(requirement)
    return sorted(found)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def source_folders(root: Path = ROOT) -> list[Path]:
    """The folders setuptools finds the packages in (``[tool.setuptools.packages.find] where``)."""
    find = pyproject(root).get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    where = find.get("where", ["."])
    if where == ["."] or "." in where:
        raise ValueError("pyproject.toml: packages.find.where must name the package folders, not the root")
    return [root / folder for folder in where]


def source_files(root: Path = ROOT, copied: Sequence[str] | None = None) -> list[str]:
    """Paths (relative to ``root``) of everything a wheel build of the project reads: the
    package folders, pyproject.toml and the readme. With ``copied`` (the paths a Dockerfile's
    COPY lines take from the build context), only the files under those paths: an image's top
    layer is built from exactly what its Dockerfile copies."""
    files = ["pyproject.toml"]
    readme = pyproject(root)["project"].get("readme")
    if isinstance(readme, str):
        files.append(readme)
    for folder in source_folders(root):
        files += _files_under(root, folder)
    if copied is None:
        return sorted(set(files))
    missing = [path for path in copied if not (root / path).exists()]
    if missing:
        raise ValueError(f"COPY of {missing}: not in {root}")
    chosen = []
    for path in copied:
        chosen += [path] if (root / path).is_file() else _files_under(root, root / path)
    return sorted(set(chosen))


def _files_under(root: Path, folder: Path) -> list[str]:
    """Files under ``folder`` as paths relative to ``root``, without bytecode, build output and
    editable-install metadata."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(root)
        if (
            path.is_file()
            and not any(part in _SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts)
            and not path.name.endswith(_SKIP_SUFFIXES)
        ):
            found.append(rel.as_posix())
    return found


def source_hash(root: Path = ROOT, copied: Sequence[str] | None = None) -> str:
    """A hash of the names and contents of :func:`source_files`."""
    h = hashlib.sha256()
    for rel in source_files(root, copied):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
