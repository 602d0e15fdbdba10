"""The job `make demo` applies: examples/demo-digits.yaml with the served weights filled in.
(The demo itself is proven by running it, see demo/README.md; these catch drift cheaply.)"""

from __future__ import annotations

import json
from typing import Any

import yaml

from demo import assets
from demo.__main__ import DATA_CLAIM, EXAMPLE, OUTPUT_CLAIM, job_manifest
from localcluster import realnode

SHA = "ab" * 32


def test_the_rendered_job_fills_in_only_the_weights() -> None:
    on_disk = yaml.safe_load(EXAMPLE.read_text())
    job = job_manifest("https://127.0.0.1:4443/w.pdparams", SHA)
    assert job["spec"]["model"]["pretrained"] == {"url": "https://127.0.0.1:4443/w.pdparams", "sha256": SHA}
    job["spec"]["model"]["pretrained"] = on_disk["spec"]["model"]["pretrained"]
    assert job == on_disk
    assert yaml.safe_load(EXAMPLE.read_text()) == on_disk, "the example file must keep its placeholders"


def test_the_example_matches_the_data_the_demo_writes() -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert spec["dataset"]["numClasses"] == len(assets.FINETUNE_CLASSES)
    assert spec["dataset"]["imageSize"] == assets.IMAGE_SIZE
    assert spec["dataset"]["volume"]["persistentVolumeClaim"]["claimName"] == DATA_CLAIM
    assert spec["output"]["volume"]["persistentVolumeClaim"]["claimName"] == OUTPUT_CLAIM
    assert spec["model"]["architecture"] == "ResNet18_vd"
    # On the local cluster's real node, the only node that runs containers.
    assert {k: spec["template"][k] for k in ("nodeSelector", "tolerations")} == realnode.pod_spec_extras()


def test_the_api_server_accepts_the_rendered_job(cluster: Any, crd_installed: str, namespace: str) -> None:
    job = job_manifest("https://127.0.0.1:4443/w.pdparams", SHA)
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(job), namespace=namespace)
    assert "demo-digits" in proc.stdout and "(server dry run)" in proc.stdout
