"""What the images take from pyproject.toml: the extras' requirements and the source files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

from images import project

ROOT = Path(__file__).resolve().parents[2]


def test_extras_expand_the_projects_own_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert project.requirements("operator") == sorted(set(extras["operator"]))
    cpu = project.requirements("cpu")
    assert set(extras["trainer"]) <= set(cpu)
    assert any(r.startswith("paddlepaddle") for r in cpu)
    assert not any("paddle-finetune-operator" in r for r in cpu)
    assert not any("paddle" in r for r in project.requirements("operator"))


def test_unknown_extra_is_named(tmp_path):
    with pytest.raises(ValueError, match="no extra 'gpu2'"):
        project.requirements("gpu2")


def test_source_files_hold_every_package_setuptools_finds():
    """Oracle: setuptools' own discovery over the folders pyproject.toml names."""
    files = set(project.source_files())
    assert {"pyproject.toml", "README.md"} <= files
    for folder in project.source_folders():
        for package in find_packages(str(folder)):
            package_dir = folder / package.replace(".", "/")
            for module in package_dir.glob("*.py"):
                assert module.relative_to(ROOT).as_posix() in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def _fake_project(root: Path, where: list[str]) -> None:
    root.mkdir()
    (root / "README.md").write_text("x\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "1"\nreadme = "README.md"\n'
        f"[tool.setuptools.packages.find]\nwhere = {where!r}\n".replace("'", '"')
    )
    for folder in where:
        (root / folder / f"pkg_{folder}").mkdir(parents=True)
        (root / folder / f"pkg_{folder}" / "__init__.py").write_text("")


def test_source_folders_follow_pyproject_when_a_package_moves(tmp_path):
    root = tmp_path / "p"
    _fake_project(root, ["contract", "operator"])
    assert project.source_files(root) == sorted(
        [
            "README.md",
            "contract/pkg_contract/__init__.py",
            "operator/pkg_operator/__init__.py",
            "pyproject.toml",
        ]
    )
    before = project.source_hash(root)
    # Bytecode and build output never change the hash; a module does.
    (root / "contract/pkg_contract/__pycache__").mkdir()
    (root / "contract/pkg_contract/__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    (root / "operator/build").mkdir()
    (root / "operator/build/junk.py").write_text("")
    assert project.source_hash(root) == before
    (root / "contract/pkg_contract/new.py").write_text("")
    assert project.source_hash(root) != before
    # Renaming a file changes the hash even with the same contents.
    after_add = project.source_hash(root)
    shutil.move(root / "contract/pkg_contract/new.py", root / "contract/pkg_contract/other.py")
    assert project.source_hash(root) != after_add


def test_source_files_narrowed_to_what_a_dockerfile_copies(tmp_path):
    root = tmp_path / "p"
    _fake_project(root, ["contract", "operator", "trainer"])
    everything = project.source_files(root)
    copied = ["pyproject.toml", "README.md", "contract", "operator"]
    narrowed = project.source_files(root, copied)
    assert narrowed == [f for f in everything if not f.startswith("trainer/")]
    before = project.source_hash(root, copied)
    (root / "trainer/pkg_trainer/new.py").write_text("")  # the other program: not this image's input
    assert project.source_hash(root, copied) == before
    (root / "operator/pkg_operator/new.py").write_text("")
    assert project.source_hash(root, copied) != before
    with pytest.raises(ValueError, match="not in"):
        project.source_files(root, ["pyproject.toml", "missing"])


def test_root_as_a_source_folder_is_refused(tmp_path):
    root = tmp_path / "p"
    _fake_project(root, ["."])
    with pytest.raises(ValueError, match="packages.find.where"):
        project.source_files(root)
