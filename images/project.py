"""What the images take from the project: its extras' requirements and its own source files,
both read from ``pyproject.toml`` so that a moved or added package folder needs no change here."""

from __future__ import annotations

import hashlib
import re
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


def source_files(root: Path = ROOT) -> list[str]:
    """Paths (relative to ``root``) of everything a wheel build of the project reads: the
    package folders, pyproject.toml and the readme."""
    files = ["pyproject.toml"]
    readme = pyproject(root)["project"].get("readme")
    if isinstance(readme, str):
        files.append(readme)
    for folder in source_folders(root):
        for path in folder.rglob("*"):
            rel = path.relative_to(root)
            if (
                path.is_file()
                and not any(part in _SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts)
                and not path.name.endswith(_SKIP_SUFFIXES)
            ):
                files.append(rel.as_posix())
    return sorted(set(files))


def source_hash(root: Path = ROOT) -> str:
    """A hash of the names and contents of :func:`source_files`."""
    h = hashlib.sha256()
    for rel in source_files(root):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
