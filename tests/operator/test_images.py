"""The images' promises that can be checked without a Docker engine.

* The operator extra installs and imports in a fresh virtual environment with no Paddle in it,
  from exactly the files the operator Dockerfile copies, so the operator image (which installs
  only `.[operator]`) builds and never carries Paddle.
* Each image copies the contract and its own program, not the other program.
* Both Dockerfiles pin their base image tags, run as a numeric non-root user, and the trainer
  image installs `.[trainer]` (the extra without Paddle) so the base image's Paddle stays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator"))
# Filled by `make operator-wheels` (a dependency of `make test`); without it pip asks PyPI.
WHEELHOUSE = CACHE / "wheels" / "operator"

DOCKERFILES = {
    "operator": ROOT / "images" / "operator" / "Dockerfile",
    "trainer": ROOT / "images" / "trainer" / "Dockerfile",
}


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    # Nothing of the test's own interpreter may leak into the fresh environment.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _copied(dockerfile: Path) -> list[str]:
    """The repository paths a Dockerfile's COPY lines take from the build context."""
    from images.dockerfile import parse

    return parse(dockerfile).copied


def test_each_image_copies_the_contract_and_only_its_own_program() -> None:
    assert _copied(DOCKERFILES["operator"]) == ["pyproject.toml", "README.md", "contract", "operator"]
    assert _copied(DOCKERFILES["trainer"]) == ["pyproject.toml", "README.md", "contract", "trainer"]


@pytest.mark.slow
def test_operator_extra_installs_and_imports_without_paddle(tmp_path: Path) -> None:
    # The build context as the operator Dockerfile sees it: only what it copies.
    context = tmp_path / "context"
    context.mkdir()
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for path in _copied(DOCKERFILES["operator"]):
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, context / path, ignore=ignored)
        else:
            shutil.copy2(ROOT / path, context / path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = str(env_dir / "bin" / "python")

    # Offline from the wheelhouse when `make operator-wheels` filled it; PyPI otherwise.
    offline = (WHEELHOUSE / ".done").exists()
    source = ["--no-index", "--find-links", str(WHEELHOUSE)] if offline else []
    install = _run(
        [
            py,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *source,
            f"{context}[operator]",
        ],
        timeout=600,
    )
    assert install.returncode == 0, f"pip install '.[operator]' failed:\n{install.stdout}\n{install.stderr}"

    imports = _run(
        [py, "-c", "import finetune_operator, finetune_contract, kopf, kubernetes, prometheus_client, yaml"],
        timeout=120,
    )
    assert imports.returncode == 0, f"the operator's imports fail in a fresh venv:\n{imports.stderr}"

    entry = env_dir / "bin" / "finetune-operator"
    assert entry.is_file(), "the finetune-operator entry point was not installed"

    no_paddle = _run([py, "-c", "import paddle"], timeout=60)
    assert no_paddle.returncode != 0, "`import paddle` works in the operator-only venv"
    assert "No module named 'paddle'" in no_paddle.stderr

    listing = _run([py, "-m", "pip", "list", "--format=freeze"], timeout=60)
    names = {line.split("==")[0].lower() for line in listing.stdout.splitlines()}
    assert not {n for n in names if n.startswith("paddlepaddle")}, f"Paddle wheels installed: {sorted(names)}"
    # The trainer's pictures, VisualDL logs and image decoding stay out of the operator image.
    trainer_only = {"visualdl", "matplotlib", "opencv-python-headless", "pillow"}
    assert not names & trainer_only, f"trainer-only packages installed: {sorted(names & trainer_only)}"


def _from_lines(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.MULTILINE)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_base_and_runs_as_numeric_non_root(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    bases = _from_lines(text)
    assert bases, f"{DOCKERFILES[name]}: no FROM line"
    for base in bases:
        ref = base.split("@", 1)[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{DOCKERFILES[name]}: base image {base!r} has no pinned tag"
        assert re.search(r"\d", tag), f"{DOCKERFILES[name]}: base tag {tag!r} names no version"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users, f"{DOCKERFILES[name]}: no USER line (the image would run as root)"
    uid = users[-1].split(":")[0]
    # Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, (
        f"{DOCKERFILES[name]}: final USER {users[-1]!r} is not a numeric non-root id"
    )


def test_operator_image_installs_only_the_operator_extra() -> None:
    text = DOCKERFILES["operator"].read_text()
    extras = re.findall(r"pip install[^\n]*'\.\[([^\]]+)\]'", text)
    assert extras == ["operator"], f"operator Dockerfile installs extras {extras}, expected only 'operator'"
    assert re.search(r'^ENTRYPOINT \["finetune-operator"\]', text, flags=re.MULTILINE)
    assert "python:" in _from_lines(text)[0] and "slim" in _from_lines(text)[0]


def test_trainer_image_keeps_the_base_paddle() -> None:
    text = DOCKERFILES["trainer"].read_text()
    base = _from_lines(text)[-1]
    assert base.startswith(
        ("paddlepaddle/paddle:", "ccr-2vdh3abv-pub.cnc.bj.baidubce.com/paddlepaddle/paddle:")
    )
    assert "-gpu-" in base, f"trainer base {base!r} is not a PaddlePaddle GPU image"
    extras = re.findall(r"pip install[^\n]*'\.\[([^\]]+)\]'", text)
    assert extras == ["trainer"], f"trainer Dockerfile installs extras {extras}, expected only 'trainer'"
    assert not re.search(r"paddlepaddle(-gpu)?[=<>\s]", text.split("FROM", 1)[1].split("\n", 1)[1]), (
        "the trainer Dockerfile installs a Paddle wheel over the base image's"
    )
    assert re.search(r'^ENTRYPOINT \["finetune-train"\]', text, flags=re.MULTILINE)


def test_trainer_extra_carries_no_paddle() -> None:
    """The premise of the trainer image: `.[trainer]` must not depend on a Paddle wheel."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["trainer"] if d.lower().startswith("paddlepaddle")]
    assert not [d for d in extras["operator"] if "paddle" in d.lower()]


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", ".cluster", "*.pdparams"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
