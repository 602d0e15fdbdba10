"""The locally built images, checked with other tools than the ones that built them.

skopeo reads each OCI archive (as `skopeo copy oci-archive:... docker://...` would for a
registry), umoci unpacks it into a runtime bundle from the image config, and runc runs it:
as the image's user, with a read-only root file system and only /tmp, /dev/shm and the
trainer's volumes writable, as the operator renders trainer pods. The contract (entrypoint,
user, working directory, environment) is compared with the one the Dockerfiles state.

Marked `images`: `make test` builds the images first (`make images`); cached, build() below
only looks them up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from images import build as images_build
from images.dockerfile import parse
from images.oci import EPOCH
from tests.images.test_dockerfile import CONTRACT

pytestmark = [pytest.mark.images, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("skopeo", "umoci", "runc")


def _need_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `make image-tools` (as root)")
    if os.geteuid() != 0:
        pytest.fail("the image tests run containers with runc: run them as root")


@pytest.fixture(scope="session")
def built() -> dict[str, images_build.Built]:
    _need_tools()
    return {item.name: item for item in images_build.build(images_build.NAMES)}


def _run(cmd: list[str], timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


@pytest.fixture(scope="session")
def bundles(built, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """name -> a runtime bundle made by skopeo (archive -> layout) and umoci (layout -> bundle)."""
    base = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, item in built.items():
        layout, bundle = base / f"{name}-layout", base / f"{name}-bundle"
        tag = item.reference.rsplit(":", 1)[1]
        copy = _run(["skopeo", "copy", "--quiet", f"oci-archive:{item.archive}", f"oci:{layout}:{tag}"])
        assert copy.returncode == 0, copy.stderr
        unpack = _run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], timeout=900)
        assert unpack.returncode == 0, unpack.stderr
        shutil.rmtree(layout)
        out[name] = bundle
    yield out
    shutil.rmtree(base, ignore_errors=True)


def _inspect_config(item: images_build.Built) -> dict:
    result = _run(["skopeo", "inspect", "--config", f"oci-archive:{item.archive}"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _runc(
    bundle: Path,
    tmp_path: Path,
    args: list[str] | None = None,
    extra_args: list[str] = (),
    mounts: list[dict] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the bundle's process (or ``args``) once with a read-only root file system."""
    config = json.loads((bundle / "config.json").read_text())
    original = json.loads(json.dumps(config))
    process = config["process"]
    process["terminal"] = False
    process["args"] = (args or process["args"]) + list(extra_args)
    config["root"]["readonly"] = True
    config["mounts"] += [
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        *mounts,
    ]
    (bundle / "config.json").write_text(json.dumps(config))
    state = tmp_path / "runc-state"
    name = f"pfo-test-{uuid.uuid4().hex[:8]}"
    try:
        return _run(["runc", "--root", str(state), "run", "--bundle", str(bundle), name], timeout=timeout)
    finally:
        _run(["runc", "--root", str(state), "delete", "--force", name])
        (bundle / "config.json").write_text(json.dumps(original))


# -- references --------------------------------------------------------------------------


def test_references_are_the_charts_and_operators_defaults_with_a_pinned_tag(built):
    chart = ROOT / "charts" / "paddle-finetune-operator"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    assert (
        built["operator"].reference
        == f"{values['image']['repository']}:{values['image']['tag'] or app_version}"
    )
    assert built["trainer"].reference == values["operator"]["trainerImage"]
    from finetune_operator.config import DEFAULT_TRAINER_IMAGE

    assert built["trainer"].reference == DEFAULT_TRAINER_IMAGE
    for item in built.values():
        tag = item.reference.rsplit(":", 1)[1]
        assert tag and tag != "latest", f"{item.reference}: IfNotPresent/Never need a pinned tag"
        with tarfile.open(item.archive) as archive:
            index = json.loads(archive.extractfile("index.json").read())
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == item.reference


# -- the contract --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_image_config_carries_the_dockerfiles_contract(built, name):
    config = _inspect_config(built[name])["config"]
    want = CONTRACT[name]
    settings = parse(ROOT / "images" / name / "Dockerfile")
    assert config["Entrypoint"] == want["entrypoint"] == settings.entrypoint
    assert config.get("Cmd") == want["cmd"] == settings.cmd
    assert config["User"] == want["user"] == settings.user
    assert config["WorkingDir"] == want["workdir"] == settings.workdir
    assert sorted(config.get("ExposedPorts", {})) == sorted(want["expose"])
    env = dict(item.split("=", 1) for item in config["Env"])
    for key, value in settings.env.items():
        assert env.get(key) == value, f"{name}: Env {key}"
    path = env["PATH"].split(":")
    assert path.index("/usr/local/bin") < path.index("/usr/bin"), "pip's console scripts must come first"


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_the_top_layer_holds_the_packages_of_what_the_dockerfile_copies(built, name):
    """Both routes install the same packages: the top layer holds exactly the packages
    setuptools finds in the folders the Dockerfile COPYs (the contract and the image's own
    program), so the operator image has no trainer code and the trainer image no operator."""
    from setuptools import find_packages

    from images import project

    copied = parse(ROOT / "images" / name / "Dockerfile").copied
    folders = [ROOT / path for path in copied if (ROOT / path).is_dir()]
    expected = {package.split(".")[0] for folder in folders for package in find_packages(str(folder))}
    assert expected == {"finetune_contract", f"finetune_{name}"}
    assert set(project.source_files(ROOT, copied)) <= set(project.source_files(ROOT))
    site = f"{images_build.SITE_PACKAGES}/"
    names = []
    for (kind, _, _), layer in zip(built[name].layers, _layers(built[name]), strict=True):
        if kind == "app":
            with tarfile.open(fileobj=layer, mode="r|gz") as tar:
                names = [m.name for m in tar if m.name.startswith(site)]
    installed = {n[len(site) :].split("/")[0] for n in names}
    packages = {p for p in installed if not p.endswith((".dist-info", ".pth")) and p != "__pycache__"}
    assert packages == expected, f"{name}: the top layer installs {sorted(installed)}"


def test_pause_image_config(built):
    config = _inspect_config(built["pause"])["config"]
    assert config["Entrypoint"] == ["/pause"] and config["User"] == "65535:65535"
    assert built["pause"].reference == images_build.PAUSE_REFERENCE


@pytest.mark.parametrize(
    ("name", "program"), [("operator", "finetune-operator"), ("trainer", "finetune-train")]
)
def test_console_script_runs_from_path_as_the_image_user_on_a_read_only_root(
    bundles, tmp_path, name, program
):
    proc = _runc(bundles[name], tmp_path, extra_args=["--help"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"usage: {program}" in proc.stdout
    probe = (
        "import os, shutil; print(os.getuid(), os.getgid(), os.getcwd(),"
        f" shutil.which({program!r}), shutil.which('python'))"
    )
    whoami = _runc(bundles[name], tmp_path, args=["python3", "-c", probe])
    assert whoami.returncode == 0, whoami.stderr
    # `python` too: the multi-GPU pod command is `python -m paddle.distributed.launch`.
    assert whoami.stdout.split() == [
        "1000",
        "1000",
        CONTRACT[name]["workdir"],
        f"/usr/local/bin/{program}",
        "/usr/bin/python",
    ]


def test_operator_image_has_no_paddle_and_imports_its_program(bundles, built, tmp_path):
    proc = _runc(
        bundles["operator"],
        tmp_path,
        args=[
            "python3",
            "-c",
            "import importlib.util as u, finetune_operator.__main__, finetune_contract, kopf,"
            " kubernetes.client; print(u.find_spec('paddle'))",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "None", "paddle is importable in the operator image"
    for layer in _layers(built["operator"]):
        with tarfile.open(fileobj=layer, mode="r|gz") as tar:
            paddle = [m.name for m in tar if "/paddle/" in f"/{m.name}/" or "paddlepaddle" in m.name]
        assert not paddle, f"Paddle files in the operator image: {paddle[:5]}"


def test_trainer_image_imports_cpu_paddle(bundles, tmp_path):
    proc = _runc(
        bundles["trainer"],
        tmp_path,
        args=[
            "python3",
            "-c",
            "import paddle; print(paddle.__version__, paddle.device.is_compiled_with_cuda())",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, cuda = proc.stdout.split()[-2:]
    assert version.startswith(("2.", "3.")) and cuda == "False"


# -- layers ------------------------------------------------------------------------------


def _layers(item: images_build.Built) -> Iterator:
    """Each layer blob of the archive as a file object, in order."""
    with tarfile.open(item.archive) as archive:
        index = json.loads(archive.extractfile("index.json").read())
        manifest_name = "blobs/" + index["manifests"][0]["digest"].replace(":", "/")
        manifest = json.loads(archive.extractfile(manifest_name).read())
        for layer in manifest["layers"]:
            yield archive.extractfile("blobs/" + layer["digest"].replace(":", "/"))


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_layers_are_normalised_and_all_bytecode_is_hash_based(built, name):
    """Fixed mtimes, no owner names, root-owned except Debian's own and the trainer's folders;
    every .pyc hash-based, so a read-only root never makes Python recompile at start."""
    kinds = [kind for kind, _, _ in built[name].layers]
    assert kinds == ["base", "deps", "app"]
    allowed_owners = {"app": {(0, 0), (1000, 1000)}, "deps": {(0, 0)}}
    timestamp_pycs: list[str] = []
    pycs = 0
    for kind, layer in zip(kinds, _layers(built[name]), strict=True):
        with tarfile.open(fileobj=layer, mode="r|gz") as tar:
            for member in tar:
                assert member.mtime == EPOCH, f"{kind}: {member.name} has mtime {member.mtime}"
                assert member.uname == member.gname == ""
                if kind in allowed_owners:
                    assert (member.uid, member.gid) in allowed_owners[kind], member.name
                if member.name.endswith(".pyc"):
                    pycs += 1
                    flags = int.from_bytes(tar.extractfile(member).read(8)[4:8], "little")
                    if not flags & 1:
                        timestamp_pycs.append(member.name)
    assert pycs > 1000
    assert not timestamp_pycs, f"{len(timestamp_pycs)} timestamp-based .pyc, e.g. {timestamp_pycs[:3]}"


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_dependency_layer_holds_every_locked_wheel_and_nothing_of_the_project(built, name):
    """Every wheel the requirement set resolved to is installed (a wheel pip skipped as
    'already satisfied' by the build root would be missing from the image)."""
    from images import project, wheels

    image = images_build.IMAGES[name]
    house = wheels.ensure_wheelhouse(project.requirements(image.extra), images_build.cache_dir() / "wheels")
    wanted = set()
    for filename, _ in wheels.lock(house):
        dist, version = filename.split("-")[:2]
        wanted.add(f"{dist}-{version}.dist-info".lower())
    kinds = [kind for kind, _, _ in built[name].layers]
    for kind, layer in zip(kinds, _layers(built[name]), strict=True):
        if kind == "deps":
            with tarfile.open(fileobj=layer, mode="r|gz") as tar:
                names = [m.name for m in tar]
    site = images_build.SITE_PACKAGES + "/"
    found = {n[len(site) :].split("/")[0].lower() for n in names if n.startswith(site) and ".dist-info" in n}
    assert wanted <= found, f"not installed: {sorted(wanted - found)}"
    assert not [n for n in found if n.startswith("paddle_finetune_operator")]


def test_sizes_are_reported_and_the_operator_stays_small(built):
    for item in built.values():
        with tarfile.open(item.archive) as archive:
            blob_sizes = {m.name: m.size for m in archive.getmembers()}
        assert item.size == sum(blob_sizes["blobs/" + d.replace(":", "/")] for _, d, _ in item.layers)
        print(f"{item.name}: {item.size / 1e6:.1f} MB gzipped, {item.unpacked_size / 1e6:.1f} MB unpacked")
    assert built["operator"].unpacked_size < 200e6
    assert built["pause"].unpacked_size < 2e6


# -- the trainer on a read-only root --------------------------------------------------------


def _tiny_dataset(root: Path, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    lines = {"train": [], "val": []}
    for label in range(classes):
        colour = np.array([(220, 40, 40), (40, 200, 60), (50, 70, 230)][label])
        for split, count in (("train", 4), ("val", 2)):
            for i in range(count):
                pixels = np.clip(colour + rng.integers(-30, 30, size=(20, 24, 3)), 0, 255).astype(np.uint8)
                rel = f"images/{split}_{label}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / rel)
                lines[split].append(f"{rel} {label}\n")
    for split, rows in lines.items():
        (root / f"{split}_list.txt").write_text("".join(rows))


def _bind(source: Path, destination: str, read_only: bool) -> dict:
    return {
        "destination": destination,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "ro" if read_only else "rw"],
    }


def test_trainer_finetunes_writing_only_to_its_volumes_tmp_and_shm(bundles, tmp_path):
    """The pod's conditions: uid 1000, read-only root, /data read-only, /output and /cache
    writable, /tmp and /dev/shm scratch (DataLoader workers share batches through /dev/shm)."""
    data, output, cache, scratch = (tmp_path / n for n in ("data", "output", "cache", "scratch"))
    _tiny_dataset(data)
    for folder in (output, cache, scratch):
        folder.mkdir()
        os.chown(folder, 1000, 1000)
    settings = {
        "model": {"architecture": "ResNet18_vd"},
        "dataset": {"root": "/data", "imageSize": 16, "resizeShort": 16},
        "finetune": {"freeze": "none"},
        "training": {"epochs": 1, "batchSize": 4, "numWorkers": 2, "warmupEpochs": 0},
        "output": {"dir": "/output/run", "resultPath": "/output/termination-log"},
        "cacheDir": "/cache",
    }
    proc = _runc(
        bundles["trainer"],
        tmp_path,
        extra_args=["--settings-json", json.dumps(settings)],
        # /tmp as a host folder (instead of the tmpfs) to see what lands there.
        mounts=[
            _bind(data, "/data", read_only=True),
            _bind(output, "/output", read_only=False),
            _bind(cache, "/cache", read_only=False),
            _bind(scratch, "/tmp", read_only=False),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "FINETUNE_PROGRESS" in proc.stdout
    result = json.loads((output / "run" / "result.json").read_text())
    assert 0 <= result["top1"] <= 1
    assert (output / "termination-log").is_file()
    assert (output / "run" / "best_model" / "model.pdparams").is_file()
    written = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
    print("written under /tmp (HOME):", written[:20])


# -- pause -------------------------------------------------------------------------------


def test_pause_runs_as_its_image_says_and_stops_on_sigterm(bundles, tmp_path):
    state = tmp_path / "runc-state"
    name = f"pfo-pause-{uuid.uuid4().hex[:8]}"
    config = json.loads((bundles["pause"] / "config.json").read_text())
    config["process"]["terminal"] = False
    config["root"]["readonly"] = True
    (bundles["pause"] / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["runc", "--root", str(state), "run", "--bundle", str(bundles["pause"]), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = _run(["runc", "--root", str(state), "state", name])
            if status.returncode == 0 and json.loads(status.stdout)["status"] == "running":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the pause container never ran")
        pid = json.loads(status.stdout)["pid"]
        ids = {k: v.split() for k, v in _status(pid).items() if k in ("Uid", "Gid")}
        assert ids == {"Uid": ["65535"] * 4, "Gid": ["65535"] * 4}
        t0 = time.monotonic()
        assert _run(["runc", "--root", str(state), "kill", name, "TERM"]).returncode == 0
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        _run(["runc", "--root", str(state), "delete", "--force", name])


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


# Forks a child that exits when the FIFO is written to, then becomes the program: the child is
# then the program's own, and only the program can reap it.
_LAUNCHER = """
import os, sys
if os.fork() == 0:
    open(sys.argv[1]).read()
    os._exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.mark.parametrize("program", ["pause", "sleep"])
def test_pause_reaps_its_children_and_exits_0_on_sigint(bundles, tmp_path, program):
    """As a pod's PID 1, pause inherits every orphan; each exited one must be reaped, not left a
    zombie. The control (`sleep`, which never waits) shows the check can tell."""
    argv = (
        [str(bundles["pause"] / "rootfs" / "pause")] if program == "pause" else [shutil.which("sleep"), "120"]
    )
    release = tmp_path / "release"
    os.mkfifo(release)
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(release), *argv], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        child = None
        while time.monotonic() < deadline:
            exe = os.path.realpath(f"/proc/{proc.pid}/exe")
            kids = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            if exe == os.path.realpath(argv[0]) and kids:
                (child,) = kids
                break
            time.sleep(0.02)
        assert child is not None, "the launcher never became the program with its child"
        with release.open("w") as fifo:
            fifo.write("exit")

        def state() -> str:
            return _status(child).get("State", "gone")

        expected = "gone" if program == "pause" else "Z"
        deadline = time.monotonic() + 30
        while not state().startswith(expected) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        assert state().startswith(expected), f"under {program}, the exited child is {state()!r}"
        if program == "pause":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0  # the handler's exit 0, not death by SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# -- caching -----------------------------------------------------------------------------


def test_a_source_change_rebuilds_only_the_top_layer(built, tmp_path):
    """A copy of the project with one module changed: base and dependency layers come from the
    cache, the top layer is rebuilt and holds the change."""
    from images import project

    copy = tmp_path / "project"
    for rel in project.source_files(ROOT):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    module = copy / "operator" / "finetune_operator" / "__init__.py"
    marker = f"# changed by the test {uuid.uuid4().hex}\n"
    module.write_text(module.read_text() + marker)

    (changed,) = images_build.build(["operator"], project_root=copy)
    kinds = {kind: (digest, built_now) for kind, digest, built_now in changed.layers}
    original = {kind: digest for kind, digest, _ in built["operator"].layers}
    assert kinds["base"] == (original["base"], False)
    assert kinds["deps"] == (original["deps"], False)
    assert kinds["app"][1] is True and kinds["app"][0] != original["app"]
    with tarfile.open(changed.archive) as archive:
        member = archive.extractfile("blobs/" + kinds["app"][0].replace(":", "/"))
        with tarfile.open(fileobj=member, mode="r|gz") as layer:
            for entry in layer:
                if entry.name == f"{images_build.SITE_PACKAGES}/finetune_operator/__init__.py":
                    assert layer.extractfile(entry).read().decode().endswith(marker)
                    break
            else:
                pytest.fail("finetune_operator/__init__.py is not in the top layer")


def test_a_change_to_the_other_program_keeps_the_top_layer(built, tmp_path):
    """The operator image's top layer is keyed by what its Dockerfile copies: a trainer change
    neither rebuilds it nor enters it."""
    from images import project

    copy = tmp_path / "project"
    for rel in project.source_files(ROOT):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    module = copy / "trainer" / "finetune_trainer" / "__init__.py"
    module.write_text(module.read_text() + f"# changed by the test {uuid.uuid4().hex}\n")
    (again,) = images_build.build(["operator"], project_root=copy)
    assert again.layers == [(kind, digest, False) for kind, digest, _ in built["operator"].layers]
    assert again.digest == built["operator"].digest
