"""Python layers: pip, run by the image's own interpreter, installs into an empty folder.

The base layer is unpacked once into a build root (cached next to the layers), and pip (from
its wheel, never installed in the image) runs there under chroot with ``--root`` pointing at an
empty staging folder, so the staging folder ends up holding exactly what the install added, in
Debian's scheme (``/usr/local/lib/python3.11/dist-packages``, scripts in ``/usr/local/bin``
with ``#!/usr/bin/python3``), as ``pip install`` inside the image would do it. Installs are
offline (``--no-index``) from wheelhouses. ``SOURCE_DATE_EPOCH`` makes pip write hash-based
bytecode, which stays valid under the layers' fixed mtimes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

from images.oci import EPOCH

SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
_INSIDE = "/tmp/pfo-build"  # where a build's inputs and output live inside the build root
_COMPLETE = ".pfo-complete"


def build_root(base_blob: Path, dest: Path) -> Path:
    """The base layer unpacked at ``dest`` (once; later calls find it)."""
    if (dest / _COMPLETE).is_file():
        return dest
    if os.geteuid() != 0:
        raise RuntimeError("building the images runs pip under chroot, which needs root")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "--numeric-owner", "-xzf", str(base_blob), "-C", str(dest)], check=True, capture_output=True
    )
    # pip's build subprocesses open /dev/null; the layer leaves /dev to the runtime.
    os.mknod(dest / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (dest / _COMPLETE).touch()
    return dest


def pip_install(root: Path, tools: Path, targets: list[Path], stage: Path) -> None:
    """Install ``targets`` (wheels, or a project folder) with their files under ``stage``.

    ``tools`` holds the pip and setuptools wheels: pip runs from its wheel, a project is built
    with setuptools unpacked on PYTHONPATH (no build isolation: nothing is downloaded or
    installed for the build). Wheels are hard-linked into the build root, a project folder is
    copied (a build writes into it); nothing outside ``root/tmp/pfo-build`` and ``stage``
    changes, and that folder is removed again.
    """
    inside = root / _INSIDE.lstrip("/")
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir(parents=True)
    try:
        (pip_wheel,) = tools.glob("pip-*.whl")
        (setuptools_wheel,) = tools.glob("setuptools-*.whl")
        _link(pip_wheel, inside / pip_wheel.name)
        with zipfile.ZipFile(setuptools_wheel) as wheel:
            wheel.extractall(inside / "setuptools")
        targets_inside: list[str] = []
        for number, target in enumerate(targets):
            if target.is_dir():
                shutil.copytree(target, inside / f"project{number}", symlinks=True)
                targets_inside.append(f"{_INSIDE}/project{number}")
            else:
                _link(target, inside / target.name)
                targets_inside.append(f"{_INSIDE}/{target.name}")
        cmd = [
            shutil.which("chroot") or "/usr/sbin/chroot",
            str(root),
            "/usr/bin/python3",
            f"{_INSIDE}/{pip_wheel.name}/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            # Whatever the build root or PYTHONPATH holds, everything goes into the stage.
            "--ignore-installed",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--root-user-action=ignore",
            # Debian marks its Python externally managed; this root file system is the image.
            "--break-system-packages",
            "--root",
            f"{_INSIDE}/stage",
            *targets_inside,
        ]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": _INSIDE,
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",  # for the build tools; pip compiles what it installs
            "SOURCE_DATE_EPOCH": str(EPOCH),
        }
        if any(target.is_dir() for target in targets):
            env["PYTHONPATH"] = f"{_INSIDE}/setuptools"  # the build backend, for a project folder
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip install in the build root failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
            )
        os.replace(inside / "stage", stage)
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
