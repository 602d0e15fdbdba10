"""Build the operator, trainer and pause images without a Docker engine.

    python -m images.build [operator|trainer|pause|all ...] [--prefix P] [--tag T] [--json]

Each image is written as an OCI archive into ``$PFO_CACHE/images/archives/`` and printed with its
reference; ``ctr -n k8s.io images import <archive>`` loads it under that reference. Layers are
cached under a hash of their inputs, so only what changed is rebuilt:

    base   Debian bookworm (mmdebstrap) + python3        key: suite, package list, options
    deps   the extra's wheels, installed by pip          key: base + the resolved wheels (sha256)
    app    the project itself (pip install .)            key: base + the source files the Dockerfile COPYs

Entrypoint, Cmd, Env, User, WorkingDir and ports come from the image's Dockerfile
(images/<name>/Dockerfile), which remains the route for registries (see images/README.md).
Needs root (mmdebstrap, chroot) and, cold, Debian's mirror and PyPI; warm, neither.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from images import dockerfile, project, rootfs, wheels
from images.oci import BlobStore, Image, ImageConfig, Layer, write_archive, write_image, write_layer
from images.pip_layer import SITE_PACKAGES, build_root, pip_install

HERE = Path(__file__).resolve().parent
DEFAULT_PREFIX = "ghcr.io/paddle-finetune-operator"
PAUSE_REFERENCE = "localhost/pfo/pause:3.10-local"
# Bump when the way a layer kind is built changes, so cached layers of the old way are not reused.
FORMAT = {"base": 2, "deps": 3, "app": 3, "pause": 1}
# The PATH and locale of Debian's and the official Python images; the Dockerfile's ENV follows.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Build tools run from their wheels inside the build root; neither ends up in an image.
TOOLS = ["pip", "setuptools>=68"]
KEEP_ARCHIVES = 2  # per image name; older archives are deleted
KEEP_LAYER_DAYS = 14  # a cached layer unused for this long is deleted


@dataclass(frozen=True)
class PythonImage:
    name: str
    extra: str  # what `pip install '.[extra]'` the image gets
    # Folders under site-packages the program never imports, removed from the dependency layer
    # (the Dockerfile removes the same), each with the reason.
    prune: dict[str, str] = field(default_factory=dict)
    # Folders the top layer creates, with their owners (uid, gid); the Dockerfile makes the same.
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def dockerfile(self) -> Path:
        return HERE / self.name / "Dockerfile"


IMAGES = {
    "operator": PythonImage(
        "operator",
        extra="operator",
        prune={
            "kubernetes/aio": "the asyncio twin of the client (68 MB); the operator uses the "
            "synchronous ApiClient and kopf talks to the API server through aiohttp itself",
        },
    ),
    # The CPU build: `.[cpu]` is the trainer extra plus the CPU paddlepaddle wheel. (The GPU
    # image is built from the Dockerfile on an official PaddlePaddle GPU image.)
    "trainer": PythonImage(
        "trainer",
        extra="cpu",
        folders={"data": (0, 0), "output": (1000, 1000), "cache": (1000, 1000)},
    ),
}
NAMES = [*IMAGES, "pause"]


@dataclass(frozen=True)
class Built:
    name: str
    reference: str
    archive: Path
    digest: str  # the manifest's
    size: int  # gzipped layers: what a registry stores and a pull transfers
    unpacked_size: int  # the layers' tars: about what the root file system takes
    layers: list[tuple[str, str, bool]]  # (kind, digest, built now)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "reference": self.reference,
            "archive": str(self.archive),
            "digest": self.digest,
            "size": self.size,
            "unpacked_size": self.unpacked_size,
            "layers": [{"kind": k, "digest": d, "built": b} for k, d, b in self.layers],
        }


def cache_dir() -> Path:
    return Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator")) / "images"


def _log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _key(kind: str, **inputs: object) -> str:
    data = json.dumps({"kind": kind, "format": FORMAT[kind], **inputs}, sort_keys=True, default=str)
    return f"{kind}-" + hashlib.sha256(data.encode()).hexdigest()


class Builder:
    """Layers and images in one cache folder; one build at a time holds its lock."""

    def __init__(self, cache: Path, project_root: Path = project.ROOT, refresh: bool = False) -> None:
        self.cache = cache
        self.refresh = refresh  # resolve the wheels and fetch Debian's packages again
        self._refreshed: set[str] = set()
        self.project_root = project_root
        self.store = BlobStore(cache / "blobs")
        self.work = cache / "tmp"
        self.written: set[str] = set()  # config and manifest blobs of this run's images

    # -- layers ---------------------------------------------------------------------------

    def _cached(self, key: str) -> Layer | None:
        record = self.cache / "layers" / f"{key}.json"
        if record.is_file():
            layer = Layer.from_json(json.loads(record.read_text()))
            if self.store.has(layer.digest):
                os.utime(record)  # recently used: kept by collect_garbage()
                return layer
        return None

    def _layer(
        self, key: str, make: Callable[[], Layer], what: str, refresh: bool = False
    ) -> tuple[Layer, bool]:
        layer = None if refresh else self._cached(key)
        if layer is not None:
            return layer, False
        _log(f"building {what} ...")
        t0 = time.monotonic()
        layer = make()
        record = self.cache / "layers" / f"{key}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(layer.to_json(), indent=1))
        _log(f"built {what} in {time.monotonic() - t0:.1f} s: {layer.size / 1e6:.1f} MB gzipped")
        return layer, True

    def base(self) -> tuple[Layer, bool]:
        key = _key("base", spec=rootfs.BASE.__dict__)
        return self._layer(
            key,
            lambda: rootfs.build_base_layer(rootfs.BASE, self.store, self.work, rootfs.BASE.describe()),
            "the base layer (mmdebstrap, about a minute)",
            refresh=self._refresh_once("base"),
        )

    def build_root(self, base: Layer) -> Path:
        roots, name = self.cache / "rootfs", base.digest.split(":")[1]
        for other in roots.glob("*") if roots.is_dir() else ():
            if other.name != name:  # the unpacked root of an older base
                shutil.rmtree(other, ignore_errors=True)
        return build_root(self.store.path(base.digest), roots / name)

    def tools(self) -> Path:
        return self._wheelhouse(TOOLS)

    def _wheelhouse(self, requirements: list[str]) -> Path:
        refresh = self._refresh_once(wheels.wheelhouse_key(requirements))
        return wheels.ensure_wheelhouse(requirements, self.cache / "wheels", refresh=refresh)

    def _refresh_once(self, what: str) -> bool:
        """True the first time ``what`` is asked for in a refreshing build."""
        if not self.refresh or what in self._refreshed:
            return False
        self._refreshed.add(what)
        return True

    def deps(self, image: PythonImage, base: Layer) -> tuple[Layer, bool]:
        requirements = project.requirements(image.extra, self.project_root)
        house = self._wheelhouse(requirements)
        tools = self.tools()
        key = _key(
            "deps",
            base=base.digest,
            wheels=wheels.lock(house),
            tools=wheels.lock(tools),
            prune=sorted(image.prune),
        )

        def make() -> Layer:
            root = self.build_root(base)
            stage = Path(tempfile.mkdtemp(dir=self.work, prefix="stage-")) / "tree"
            try:
                pip_install(root, tools, sorted(house.glob("*.whl")), stage)
                for rel in image.prune:
                    shutil.rmtree(stage / SITE_PACKAGES / rel, ignore_errors=True)
                names = ", ".join(sorted(requirements))
                return write_layer(stage, self.store, f"pip install (wheels of: {names})")
            finally:
                shutil.rmtree(stage.parent, ignore_errors=True)

        return self._layer(key, make, f"the {image.name} dependency layer ({len(wheels.lock(house))} wheels)")

    def app(self, image: PythonImage, base: Layer) -> tuple[Layer, bool]:
        tools = self.tools()
        # Exactly what the Dockerfile copies into its build (the contract and this image's own
        # program), so a change to the other program neither rebuilds nor enters this layer.
        copied = dockerfile.parse(image.dockerfile).copied
        key = _key(
            "app",
            base=base.digest,
            source=project.source_hash(self.project_root, copied),
            tools=wheels.lock(tools),
            folders=sorted(image.folders.items()),
        )

        def make() -> Layer:
            src = Path(tempfile.mkdtemp(dir=self.work, prefix="src-"))
            stage = Path(tempfile.mkdtemp(dir=self.work, prefix="stage-")) / "tree"
            try:
                for rel in project.source_files(self.project_root, copied):
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.project_root / rel, src / rel)
                pip_install(self.build_root(base), tools, [src], stage)
                for folder in image.folders:
                    (stage / folder).mkdir(mode=0o755)
                return write_layer(
                    stage,
                    self.store,
                    "pip install --no-deps . (paddle-finetune-operator)",
                    owners=dict(image.folders),
                )
            finally:
                shutil.rmtree(src, ignore_errors=True)
                shutil.rmtree(stage.parent, ignore_errors=True)

        return self._layer(key, make, f"the {image.name} top layer (the project's code)")

    def pause(self) -> tuple[Layer, bool]:
        source = HERE / "pause" / "pause.c"
        gcc = shutil.which("gcc")
        if gcc is None:
            raise RuntimeError("gcc is not installed: run `make image-tools` (Debian's gcc and libc6-dev)")
        version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
        key = _key("pause", source=source.read_text(), gcc=version.splitlines()[0])

        def make() -> Layer:
            tree = Path(tempfile.mkdtemp(dir=self.work, prefix="pause-"))
            try:
                binary = tree / "pause"
                flags = ["-Os", "-static", "-Wall", "-Wextra", "-Werror", "-s"]
                subprocess.run([gcc, *flags, "-o", str(binary), str(source)], check=True, capture_output=True)
                binary.chmod(0o755)
                return write_layer(tree, self.store, "gcc -Os -static -s images/pause/pause.c")
            finally:
                shutil.rmtree(tree, ignore_errors=True)

        return self._layer(key, make, "the pause program")

    # -- images ---------------------------------------------------------------------------

    def build(self, name: str, prefix: str, tag: str) -> Built:
        t0 = time.monotonic()
        if name == "pause":
            layer, built = self.pause()
            kinds = [("pause", layer, built)]
            config = ImageConfig(
                entrypoint=["/pause"],
                cmd=None,
                env=[f"PATH={BASE_ENV['PATH']}"],
                user="65535:65535",
                working_dir="/",
                exposed_ports=[],
            )
            reference = PAUSE_REFERENCE
        else:
            image = IMAGES[name]
            base, base_built = self.base()
            deps, deps_built = self.deps(image, base)
            app, app_built = self.app(image, base)
            kinds = [("base", base, base_built), ("deps", deps, deps_built), ("app", app, app_built)]
            config = image_config(image.dockerfile)
            reference = f"{prefix}/{name}:{tag}"
        if reference.endswith(":latest"):
            raise ValueError(f"{reference}: a node only uses local images whose tag is not 'latest'")
        oci_image = write_image(self.store, [layer for _, layer, _ in kinds], config)
        self.written |= {oci_image.config_digest, oci_image.manifest_digest}
        archive = self._archive(name, oci_image, reference)
        built_image = Built(
            name=name,
            reference=reference,
            archive=archive,
            digest=oci_image.manifest_digest,
            size=oci_image.size,
            unpacked_size=oci_image.unpacked_size,
            layers=[(kind, layer.digest, built) for kind, layer, built in kinds],
        )
        _log(f"{name}: ready in {time.monotonic() - t0:.1f} s")
        return built_image

    def collect_garbage(self, keep: set[str]) -> None:
        """Delete layers unused for KEEP_LAYER_DAYS and blobs that neither a remaining layer
        nor ``keep`` (the configs and manifests just written) refers to."""
        live = set(keep)
        cutoff = time.time() - KEEP_LAYER_DAYS * 86400
        for record in (self.cache / "layers").glob("*.json"):
            if record.stat().st_mtime < cutoff:
                record.unlink()
            else:
                live.add(json.loads(record.read_text())["digest"])
        for blob in (self.store.root / "sha256").glob("*"):
            if f"sha256:{blob.name}" not in live:
                blob.unlink()

    def _archive(self, name: str, image: Image, reference: str) -> Path:
        ident = hashlib.sha256(f"{reference}\0{image.manifest_digest}".encode()).hexdigest()[:16]
        archive = self.cache / "archives" / f"{name}-{ident}.oci.tar"
        if archive.is_file():
            os.utime(archive)  # most recently used: kept by the clean-up below
        else:
            write_archive(self.store, image, reference, archive)
        older = sorted(
            (p for p in archive.parent.glob(f"{name}-*.oci.tar") if p != archive),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in older[KEEP_ARCHIVES - 1 :]:
            stale.unlink(missing_ok=True)
        return archive


def image_config(path: Path) -> ImageConfig:
    """The runtime config the Dockerfile at ``path`` gives its image, on our Debian base."""
    settings = dockerfile.parse(path)
    if settings.entrypoint is None or settings.user is None:
        raise dockerfile.DockerfileError(f"{path}: the final stage needs ENTRYPOINT and USER")
    env = {**BASE_ENV, **settings.env}
    return ImageConfig(
        entrypoint=settings.entrypoint,
        cmd=settings.cmd,
        env=[f"{k}={v}" for k, v in env.items()],
        user=settings.user,
        working_dir=settings.workdir,
        exposed_ports=settings.expose,
    )


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Leftovers of a build that was killed; nobody else builds while we hold the lock.
        shutil.rmtree(cache / "tmp", ignore_errors=True)
        (cache / "tmp").mkdir()
        try:
            yield
        finally:
            shutil.rmtree(cache / "tmp", ignore_errors=True)


def build(
    names: list[str],
    prefix: str = DEFAULT_PREFIX,
    tag: str | None = None,
    cache: Path | None = None,
    project_root: Path = project.ROOT,
    refresh: bool = False,
) -> list[Built]:
    """Build (or find cached) each named image; the Python entry point for other tools.

    ``names``: any of "operator", "trainer", "pause". ``cache``: the images cache folder
    (default ``$PFO_CACHE/images``). ``project_root``: the checkout whose code goes in.
    ``refresh``: resolve the wheels and fetch Debian's packages again (security updates, new
    releases); layers whose content did not change keep their digests.
    """
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}: choose from {NAMES} or 'all'")
    tag = tag or project.pyproject(project_root)["project"]["version"]
    cache = cache or cache_dir()
    with _locked(cache):
        builder = Builder(cache, project_root, refresh)
        results = [builder.build(name, prefix, tag) for name in names]
        builder.collect_garbage(builder.written)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"{', '.join(NAMES)} or all (default)")
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"registry/org of the references ({DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--tag", default=None, help="tag of the operator and trainer images (the project version)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument(
        "--refresh", action="store_true", help="resolve the wheels and fetch Debian's packages again"
    )
    args = parser.parse_args(argv)
    names = NAMES if "all" in args.names else list(dict.fromkeys(args.names))
    try:
        results = build(names, prefix=args.prefix, tag=args.tag, refresh=args.refresh)
    except (RuntimeError, ValueError) as exc:
        print(f"images.build: {exc}", file=sys.stderr)
        return 1
    for item in results:
        if args.json:
            print(json.dumps(item.to_json()))
        else:
            print(
                f"{item.name:<9} {item.reference}\n"
                f"          {item.archive}\n"
                f"          {item.size / 1e6:.1f} MB gzipped, {item.unpacked_size / 1e6:.1f} MB unpacked"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
