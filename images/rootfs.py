"""The base layer: a Debian root file system made by mmdebstrap from Debian's packages.

``--variant=extract`` unpacks exactly the listed packages and their dependencies (Debian's
python3 3.11 and the C libraries it and the wheels need), without Debian's Essential set
(coreutils, bash, perl, ...) that a running program never calls: the distroless approach,
about 70 MB instead of about 105 MB for ``--variant=essential``. Maintainer scripts do not run
in that variant, so the few of their effects the image needs are done here after extraction:
``/etc/passwd`` and ``/etc/group`` from base-passwd's masters, the dynamic linker's cache, and
the standard library's bytecode, compiled hash-based because layer tars carry one fixed mtime
(a timestamp-based .pyc would look stale and be recompiled in memory at every start on a
read-only root file system).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.oci import EPOCH, BlobStore, Layer, write_layer

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class BaseSpec:
    suite: str
    mirror: str
    security_mirror: str
    variant: str
    packages: tuple[str, ...]
    # dpkg --path-exclude patterns: what no container needs.
    path_excludes: tuple[str, ...]

    def sources(self) -> list[str]:
        signed = f"[signed-by={KEYRING}]"
        return [
            f"deb {signed} {self.mirror} {self.suite} main",
            f"deb {signed} {self.mirror} {self.suite}-updates main",
            f"deb {signed} {self.security_mirror} {self.suite}-security main",
        ]

    def describe(self) -> str:
        return f"debian {self.suite} (mmdebstrap --variant={self.variant}): {' '.join(self.packages)}"


BASE = BaseSpec(
    suite="bookworm",
    mirror="http://deb.debian.org/debian",
    security_mirror="http://deb.debian.org/debian-security",
    variant="extract",
    # python-is-python3: the multi-GPU pod command is `python -m paddle.distributed.launch`.
    # libstdc++6, libgomp1: manylinux wheels (Paddle, numpy) link them from the system.
    # dash: /bin/sh; coreutils, grep: `import paddle` runs `cat /proc/cpuinfo | grep -i avx`
    # through the shell (7 MB; also what `kubectl exec` users expect); base-passwd: the system
    # users; libc-bin: ldconfig (ctypes.util reads its cache); netbase: /etc/services and
    # /etc/protocols. No ca-certificates: its bundle is made by a maintainer script; requests
    # (the trainer's downloads) brings certifi's.
    packages=(
        "python3",
        "python-is-python3",
        "libstdc++6",
        "libgomp1",
        "dash",
        "coreutils",
        "grep",
        "base-files",
        "base-passwd",
        "libc-bin",
        "netbase",
    ),
    path_excludes=(
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
        "/usr/share/lintian/*",
        "/usr/share/bash-completion/*",
    ),
)

# What the skipped maintainer scripts would have done that the image needs (run by chroot).
_FINISH = [
    ["/sbin/ldconfig"],
    [
        "/usr/bin/python3",
        "-m",
        "compileall",
        "-q",
        "-f",
        "-j",
        "0",
        "--invalidation-mode",
        "checked-hash",
        "/usr/lib/python3.11",
    ],
]


def build_base_layer(spec: BaseSpec, store: BlobStore, work: Path, created_by: str) -> Layer:
    """Run mmdebstrap into a fresh folder under ``work`` and pack it as a layer."""
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError(
            "mmdebstrap is not installed: run `make image-tools` (Debian's mmdebstrap package)"
        )
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="base-"))
    root = tmp / "rootfs"
    try:
        cmd = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            f"--variant={spec.variant}",
            "--include=" + ",".join(spec.packages),
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in spec.path_excludes),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            spec.suite,
            str(root),
            *spec.sources(),
        ]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": str(EPOCH), "LC_ALL": "C.UTF-8"}
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-4000:]}")
        # The runtime mounts these; the build host's copies must not end up in the image.
        for name in ("etc/resolv.conf", "etc/hostname"):
            (root / name).unlink(missing_ok=True)
        for name in ("passwd", "group"):
            shutil.copyfile(root / f"usr/share/base-passwd/{name}.master", root / f"etc/{name}")
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        for step in _FINISH:
            done = subprocess.run(
                [chroot, str(root), *step], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(step)} in the new root file system failed:\n{done.stderr[-4000:]}"
                )
        # ldconfig's own speed-up cache records inode numbers and times: never reproducible.
        (root / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)
        # Device nodes are the runtime's business (it mounts /dev); keep the empty folder.
        return write_layer(
            root, store, created_by, exclude=lambda rel: rel.startswith("dev/"), keep_owners=True
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
