"""Fetching (from a local HTTP server) and loading pretrained weights."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import paddle
import pytest
from finetune_contract import PretrainedSource
from finetune_trainer.model import build_model
from finetune_trainer.pretrained import (
    OFFICIAL_WEIGHTS,
    DownloadError,
    PretrainedError,
    cache_name,
    fetch_pretrained,
    load_pretrained,
    official_architecture,
    read_state_dict,
)

FAST = {"retries": 1, "backoff": 0.0, "timeout": 10.0}


class WeightsServer:
    """A tiny HTTP server on 127.0.0.1: routes map a path to (status, body, behaviour)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        self.hits: Counter[str] = Counter()
        self.fail_first: dict[str, int] = {}  # path -> answer 500 this many times first
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                if server.fail_first.get(self.path, 0) > 0:
                    server.fail_first[self.path] -= 1
                    self.send_error(500)
                    return
                status, body, mode = server.routes.get(self.path, (404, b"not found", "full"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "truncate":  # promise the whole body, send half, hang up
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = WeightsServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def r18_1000_file(tmp_path_factory) -> Path:
    paddle.seed(10)
    path = tmp_path_factory.mktemp("weights") / "ResNet18_vd_1000.pdparams"
    paddle.save(build_model("ResNet18_vd", 1000).state_dict(), str(path))
    return path


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------ sources
def test_official_names():
    for name in (
        "ResNet18_vd",
        "ResNet34_vd",
        "ResNet50_vd",
        "ResNet101_vd",
        "ResNet152_vd",
        "ResNet50_vd_ssld",
    ):
        assert OFFICIAL_WEIGHTS[name] == (
            "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/"
            f"{name}_pretrained.pdparams"
        )
    assert official_architecture("ResNet50_vd_ssld") == "ResNet50_vd"
    with pytest.raises(PretrainedError, match="model.pretrained.name: 'ResNet50'"):
        official_architecture("ResNet50")


def test_no_source_means_no_weights(tmp_path):
    assert fetch_pretrained(PretrainedSource(), tmp_path / "cache") is None


def test_plain_http_only_for_loopback(tmp_path):
    with pytest.raises(PretrainedError, match="must be an https URL"):
        fetch_pretrained(PretrainedSource(url="http://example.com/w.pdparams"), tmp_path, **FAST)
    with pytest.raises(PretrainedError, match="must be an https URL"):
        fetch_pretrained(PretrainedSource(url="ftp://127.0.0.1/w.pdparams"), tmp_path, **FAST)


def test_local_path(tmp_path, r18_1000_file):
    data_root = r18_1000_file.parent
    got = fetch_pretrained(PretrainedSource(path=r18_1000_file.name), tmp_path, base_dir=data_root)
    assert got == r18_1000_file
    good = hashlib.sha256(r18_1000_file.read_bytes()).hexdigest()
    assert fetch_pretrained(PretrainedSource(path=str(r18_1000_file), sha256=good), tmp_path) == r18_1000_file
    with pytest.raises(PretrainedError, match="sha256"):
        fetch_pretrained(PretrainedSource(path=str(r18_1000_file), sha256="0" * 64), tmp_path)
    with pytest.raises(PretrainedError, match="nope.pdparams does not exist"):
        fetch_pretrained(PretrainedSource(path="nope.pdparams"), tmp_path, base_dir=data_root)


# ---------------------------------------------------------------------------------- downloads
def test_download_then_reuse_from_cache(tmp_path, server, r18_1000_file):
    body = r18_1000_file.read_bytes()
    server.routes["/w/r18.pdparams"] = (200, body, "full")
    source = PretrainedSource(url=server.url("/w/r18.pdparams"))
    cache = tmp_path / "cache"
    first = fetch_pretrained(source, cache, **FAST)
    assert first.read_bytes() == body
    assert first.parent == cache and first.name == cache_name(source.url)
    second = fetch_pretrained(source, cache, **FAST)
    assert second == first
    assert server.hits["/w/r18.pdparams"] == 1  # the second call never reached the server
    assert _files(cache) == [first.name]  # no temporary files left behind


def test_sha256_good_and_bad(tmp_path, server, r18_1000_file):
    body = r18_1000_file.read_bytes()
    good = hashlib.sha256(body).hexdigest()
    server.routes["/w.pdparams"] = (200, body, "full")
    cache = tmp_path / "cache"
    with pytest.raises(PretrainedError, match=f"has sha256 {good}, expected {'ab' * 32}"):
        fetch_pretrained(PretrainedSource(url=server.url("/w.pdparams"), sha256="ab" * 32), cache, **FAST)
    assert _files(cache) == []  # the bad file was not kept
    path = fetch_pretrained(PretrainedSource(url=server.url("/w.pdparams"), sha256=good), cache, **FAST)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == good


def test_corrupted_cache_entry_is_downloaded_again(tmp_path, server, r18_1000_file):
    body = r18_1000_file.read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    server.routes["/w.pdparams"] = (200, body, "full")
    source = PretrainedSource(url=server.url("/w.pdparams"), sha256=sha)
    path = fetch_pretrained(source, tmp_path, **FAST)
    path.write_bytes(b"bit rot")
    assert fetch_pretrained(source, tmp_path, **FAST).read_bytes() == body
    assert server.hits["/w.pdparams"] == 2


def test_truncated_body_leaves_no_partial_file(tmp_path, server, r18_1000_file):
    server.routes["/cut.pdparams"] = (200, r18_1000_file.read_bytes(), "truncate")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="cut.pdparams"):
        fetch_pretrained(PretrainedSource(url=server.url("/cut.pdparams")), cache, **FAST)
    assert server.hits["/cut.pdparams"] == 2  # retried once
    assert _files(cache) == []


def test_http_errors(tmp_path, server):
    with pytest.raises(PretrainedError, match="HTTP 404"):
        fetch_pretrained(PretrainedSource(url=server.url("/missing.pdparams")), tmp_path, **FAST)
    assert server.hits["/missing.pdparams"] == 1  # a 404 is not retried
    server.fail_first["/busy.pdparams"] = 100
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch_pretrained(PretrainedSource(url=server.url("/busy.pdparams")), tmp_path, **FAST)
    assert server.hits["/busy.pdparams"] >= 2
    assert _files(tmp_path) == []


def test_server_error_then_success_is_retried(tmp_path, server):
    server.routes["/flaky.pdparams"] = (200, b"payload", "full")
    server.fail_first["/flaky.pdparams"] = 1
    path = fetch_pretrained(PretrainedSource(url=server.url("/flaky.pdparams")), tmp_path, **FAST)
    assert path.read_bytes() == b"payload"
    assert server.hits["/flaky.pdparams"] == 2


def test_unreachable_server_is_transient(tmp_path):
    srv = WeightsServer()
    url = srv.url("/gone.pdparams")
    srv.close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match="gone.pdparams"):
        fetch_pretrained(PretrainedSource(url=url), tmp_path, **FAST)


# ------------------------------------------------------------------------------------ loading
def _assert_loaded_equal(model, file_state, names):
    state = model.state_dict()
    for name in names:
        np.testing.assert_array_equal(state[name].numpy(), file_state[name], err_msg=name)


def test_strip_fc_resnet18(r18_1000_file):
    paddle.seed(11)
    model = build_model("ResNet18_vd", 10)
    fc_before = model.state_dict()["fc.weight"].numpy().copy()
    report = load_pretrained(model, r18_1000_file)
    assert report.stripped == ["fc.weight", "fc.bias"]
    assert report.shapes["fc.weight"] == ([512, 1000], [512, 10])
    assert report.missing == [] and report.unexpected == []
    file_state = read_state_dict(r18_1000_file)
    assert len(report.loaded) == len(file_state) - 2
    _assert_loaded_equal(model, file_state, report.loaded)
    np.testing.assert_array_equal(model.state_dict()["fc.weight"].numpy(), fc_before)  # untouched
    summary = report.load_summary()
    assert summary.strippedParameters == ["fc.weight", "fc.bias"]
    assert summary.missingParameters == summary.unexpectedParameters == []
    assert len(report.loaded) == 115


def test_strip_fc_resnet50(tmp_path):
    paddle.seed(12)
    path = tmp_path / "r50.pdparams"
    paddle.save(build_model("ResNet50_vd", 1000).state_dict(), str(path))
    model = build_model("ResNet50_vd", 10)
    report = load_pretrained(model, path)
    assert report.stripped == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == 275 and report.missing == [] and report.unexpected == []
    file_state = read_state_dict(path)
    _assert_loaded_equal(model, file_state, report.loaded)


def test_no_strip_raises_naming_the_parameter(r18_1000_file):
    with pytest.raises(PretrainedError, match=r"fc.weight has shape \[512, 1000\] .* \[512, 10\]"):
        load_pretrained(build_model("ResNet18_vd", 10), r18_1000_file, strip_mismatched=False)


def test_same_class_count_loads_everything(r18_1000_file):
    model = build_model("ResNet18_vd", 1000)
    report = load_pretrained(model, r18_1000_file, strip_mismatched=False)
    assert report.stripped == [] and len(report.loaded) == 117
    _assert_loaded_equal(model, read_state_dict(r18_1000_file), report.loaded)


def test_missing_and_unexpected_are_reported(tmp_path, r18_1000_file):
    state = paddle.load(str(r18_1000_file))
    del state["blocks.7.conv1.bn._variance"]
    state["blocks.99.extra.weight"] = paddle.ones([3])
    path = tmp_path / "edited.pdparams"
    paddle.save(state, str(path))
    model = build_model("ResNet18_vd", 1000)
    var_before = model.state_dict()["blocks.7.conv1.bn._variance"].numpy().copy()
    report = load_pretrained(model, path)
    assert report.missing == ["blocks.7.conv1.bn._variance"]
    assert report.unexpected == ["blocks.99.extra.weight"]
    np.testing.assert_array_equal(model.state_dict()["blocks.7.conv1.bn._variance"].numpy(), var_before)


def test_another_architecture_fails_clearly(r18_1000_file):
    with pytest.raises(PretrainedError, match="another architecture or naming scheme than ResNet34_vd"):
        load_pretrained(build_model("ResNet34_vd", 10), r18_1000_file)


def test_another_naming_scheme_fails_clearly(tmp_path, r18_1000_file):
    state = {f"backbone.{k}": v for k, v in paddle.load(str(r18_1000_file)).items()}
    path = tmp_path / "renamed.pdparams"
    paddle.save(state, str(path))
    with pytest.raises(PretrainedError, match=r"only 0 of the model's 115 backbone tensors"):
        load_pretrained(build_model("ResNet18_vd", 10), path)


def test_not_a_state_dict(tmp_path):
    junk = tmp_path / "junk.pdparams"
    junk.write_bytes(b"<html>login required</html>")
    with pytest.raises(PretrainedError, match="junk.pdparams: not a Paddle state dict"):
        load_pretrained(build_model("ResNet18_vd", 10), junk)
    lst = tmp_path / "list.pdparams"
    paddle.save([1, 2, 3], str(lst))
    with pytest.raises(PretrainedError, match="holds a list"):
        load_pretrained(build_model("ResNet18_vd", 10), lst)
    with pytest.raises(PretrainedError, match="does not exist"):
        load_pretrained(build_model("ResNet18_vd", 10), tmp_path / "absent.pdparams")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_crafted_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pdparams"
    evil.write_bytes(pickle.dumps({"fc.weight": _Payload(marker)}))
    with pytest.raises(PretrainedError, match=r"refers to posix\.mkdir, which a state file never holds"):
        load_pretrained(build_model("ResNet18_vd", 10), evil)
    assert not marker.exists()


def test_unusable_cache_dir_is_permanent(tmp_path, server):
    server.routes["/w.pdparams"] = (200, b"payload", "full")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(PretrainedError, match="cacheDir: cannot create"):
        fetch_pretrained(PretrainedSource(url=server.url("/w.pdparams")), blocker / "cache", **FAST)
    assert server.hits["/w.pdparams"] == 0
