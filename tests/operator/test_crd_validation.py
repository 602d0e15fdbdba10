"""The FineTuneJob CRD in a real API server: invalid specs are rejected with a message naming the
field, valid ones are accepted and defaulted, immutable fields stay immutable, and kubectl shows
the documentation and the printer columns."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from tests.operator import crd

DELETE = object()  # marks a field to remove in a test variant

PVC = {"persistentVolumeClaim": {"claimName": "data"}}
SHA = "0123456789abcdef" * 4


def variant(changes: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    """The minimal job with `changes` applied: dotted paths under spec mapped to values (or DELETE)."""
    job = crd.minimal_job(name)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = job["spec"]
        for part in parents:
            target = target.setdefault(part, {})
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = copy.deepcopy(value)
    return job


# (id, changes, the field path the error must name, a fragment of the message)
INVALID = [
    # wrong types
    ("epochs-string", {"training.epochs": "twenty"}, "spec.training.epochs", "must be of type integer"),
    ("batch-size-float", {"training.batchSize": 3.5}, "spec.training.batchSize", "must be of type integer"),
    ("gpus-string", {"resources.gpus": "2"}, "spec.resources.gpus", "must be of type integer"),
    (
        "strip-string",
        {"finetune.stripMismatched": "yes"},
        "spec.finetune.stripMismatched",
        "must be of type boolean",
    ),
    ("dataset-list", {"dataset": ["data"]}, "spec.dataset", "must be of type object"),
    # enums
    ("architecture-enum", {"model.architecture": "ResNet50"}, "spec.model.architecture", "Unsupported value"),
    (
        "pretrained-name-enum",
        {"model.pretrained": {"name": "VGG16"}},
        "spec.model.pretrained.name",
        "Unsupported",
    ),
    ("freeze-enum", {"finetune.freeze": "partial"}, "spec.finetune.freeze", "Unsupported value"),
    ("format-enum", {"dataset.format": "coco"}, "spec.dataset.format", "Unsupported value"),
    ("amp-enum", {"training.amp": "fp8"}, "spec.training.amp", "Unsupported value"),
    ("pull-policy-enum", {"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "Unsupported value"),
    (
        "toleration-operator-enum",
        {"template.tolerations": [{"key": "gpu", "operator": "In"}]},
        "spec.template.tolerations[0].operator",
        "Unsupported value",
    ),
    # what a pod would refuse (found by tests/operator/test_fuzz_api.py): refused at apply time
    (
        "toleration-no-key-needs-exists",
        {"template.tolerations": [{"operator": "Equal", "value": "x"}]},
        "spec.template.tolerations[0].operator",
        "operator must be Exists when key is empty",
    ),
    (
        "toleration-seconds-needs-no-execute",
        {"template.tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "spec.template.tolerations[0].tolerationSeconds",
        "tolerationSeconds needs effect NoExecute",
    ),
    (
        "toleration-exists-with-value",
        {"template.tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]},
        "spec.template.tolerations[0].value",
        "value must be empty when operator is Exists",
    ),
    (
        "toleration-key",
        {"template.tolerations": [{"key": "a b", "operator": "Exists"}]},
        "spec.template.tolerations[0].key",
        "should match",
    ),
    ("label-key", {"template.labels": {"a b": "x"}}, "spec.template.labels", "keys must be label keys"),
    ("label-value", {"template.labels": {"team": "a b"}}, "spec.template.labels.team", "should match"),
    (
        "node-selector-key",
        {"template.nodeSelector": {"/x": "y"}},
        "spec.template.nodeSelector",
        "keys must be label keys",
    ),
    (
        "annotation-key",
        {"template.annotations": {"-x": "y"}},
        "spec.template.annotations",
        "keys must be label keys",
    ),
    (
        "csi-driver",
        {"dataset.volume": {"csi": {"driver": "My_Driver"}}},
        "spec.dataset.volume.csi.driver",
        "should match",
    ),
    (
        "csi-secret-name",
        {"dataset.volume": {"csi": {"driver": "d.example.com", "nodePublishSecretRef": {"name": "Secret"}}}},
        "spec.dataset.volume.csi.nodePublishSecretRef.name",
        "should match",
    ),
    ("image-whitespace", {"image": "trainer:1 "}, "spec.image", "should match"),
    # ranges
    ("epochs-zero", {"training.epochs": 0}, "spec.training.epochs", "greater than or equal to 1"),
    ("epochs-too-many", {"training.epochs": 1001}, "spec.training.epochs", "less than or equal to 1000"),
    ("batch-too-big", {"training.batchSize": 5000}, "spec.training.batchSize", "less than or equal to 4096"),
    ("gpus-too-many", {"resources.gpus": 17}, "spec.resources.gpus", "less than or equal to 16"),
    ("nodes-zero", {"resources.nodes": 0}, "spec.resources.nodes", "greater than or equal to 1"),
    ("nodes-too-many", {"resources.nodes": 65}, "spec.resources.nodes", "less than or equal to 64"),
    ("nodes-string", {"resources.nodes": "2"}, "spec.resources.nodes", "must be of type integer"),
    ("nodes-float", {"resources.nodes": 1.5}, "spec.resources.nodes", "must be of type integer"),
    ("num-classes-one", {"dataset.numClasses": 1}, "spec.dataset.numClasses", "greater than or equal to 2"),
    ("image-size-small", {"dataset.imageSize": 16}, "spec.dataset.imageSize", "greater than or equal to 32"),
    ("learning-rate-zero", {"training.learningRate": 0}, "spec.training.learningRate", "greater than 0"),
    ("momentum-above-one", {"training.momentum": 1.5}, "spec.training.momentum", "less than or equal to 1"),
    ("label-smoothing-one", {"training.labelSmoothing": 1}, "spec.training.labelSmoothing", "less than 1"),
    (
        "backoff-negative",
        {"runPolicy.backoffLimit": -1},
        "spec.runPolicy.backoffLimit",
        "greater than or equal to 0",
    ),
    (
        "deadline-zero",
        {"runPolicy.activeDeadlineSeconds": 0},
        "spec.runPolicy.activeDeadlineSeconds",
        "greater than or equal to 1",
    ),
    (
        "grace-too-short",
        {"runPolicy.terminationGracePeriodSeconds": 5},
        "spec.runPolicy.terminationGracePeriodSeconds",
        "greater than or equal to 10",
    ),
    (
        "grace-too-long",
        {"runPolicy.terminationGracePeriodSeconds": 3601},
        "spec.runPolicy.terminationGracePeriodSeconds",
        "less than or equal to 3600",
    ),
    (
        "start-timeout-zero",
        {"runPolicy.startTimeoutSeconds": 0},
        "spec.runPolicy.startTimeoutSeconds",
        "greater than or equal to 1",
    ),
    (
        "scheduling-timeout-negative",
        {"runPolicy.schedulingTimeoutSeconds": -1},
        "spec.runPolicy.schedulingTimeoutSeconds",
        "greater than or equal to 0",
    ),
    ("cpu-not-quantity", {"resources.cpu": "lots"}, "spec.resources.cpu", "positive Kubernetes quantity"),
    (
        "memory-negative",
        {"resources.memory": "-1Gi"},
        "spec.resources.memory",
        "positive Kubernetes quantity",
    ),
    # missing required fields
    ("dataset-missing", {"dataset": DELETE}, "spec.dataset", "Required value"),
    ("output-missing", {"output": DELETE}, "spec.output", "Required value"),
    ("dataset-volume-missing", {"dataset.volume": DELETE}, "spec.dataset.volume", "Required value"),
    (
        "claim-name-missing",
        {"output.volume": {"persistentVolumeClaim": {}}},
        "spec.output.volume.persistentVolumeClaim.claimName",
        "Required value",
    ),
    (
        "claim-name-pattern",
        {"dataset.volume": {"persistentVolumeClaim": {"claimName": "Flowers_102"}}},
        "spec.dataset.volume.persistentVolumeClaim.claimName",
        "should match",
    ),
    (
        "num-classes-missing-for-list",
        {"dataset.numClasses": DELETE},
        "spec.dataset.numClasses",
        "required when format",
    ),
    # pretrained source
    (
        "two-pretrained-sources",
        {"model.pretrained": {"name": "ResNet50_vd", "url": "https://example.com/w.pdparams"}},
        "spec.model.pretrained",
        "at most one pretrained source",
    ),
    (
        "url-and-path",
        {"model.pretrained": {"url": "https://example.com/w.pdparams", "path": "w.pdparams"}},
        "spec.model.pretrained",
        "at most one pretrained source",
    ),
    (
        "http-url",
        {"model.pretrained": {"url": "http://example.com/w.pdparams"}},
        "spec.model.pretrained.url",
        "must be an https:// URL",
    ),
    (
        "url-without-host",
        {"model.pretrained": {"url": "https:///w.pdparams"}},
        "spec.model.pretrained.url",
        "must be an https:// URL",
    ),
    (
        "sha256-short",
        {"model.pretrained": {"url": "https://example.com/w.pdparams", "sha256": "abc123"}},
        "spec.model.pretrained.sha256",
        "should match",
    ),
    (
        "sha256-uppercase",
        {"model.pretrained": {"path": "w.pdparams", "sha256": SHA.upper()}},
        "spec.model.pretrained.sha256",
        "should match",
    ),
    (
        "sha256-with-name",
        {"model.pretrained": {"name": "ResNet50_vd", "sha256": SHA}},
        "spec.model.pretrained.sha256",
        "sha256 checks a file given by url or path",
    ),
    (
        "sha256-alone",
        {"model.pretrained": {"sha256": SHA}},
        "spec.model.pretrained.sha256",
        "sha256 checks a file given by url or path",
    ),
    (
        "pretrained-of-another-architecture",
        {"model": {"architecture": "ResNet18_vd", "pretrained": {"name": "ResNet50_vd_ssld"}}},
        "spec.model.pretrained.name",
        "holds weights for another network",
    ),
    (
        "from-scratch-with-pretrained",
        {"model.pretrained": {"name": "ResNet50_vd"}, "finetune.freeze": "from-scratch"},
        "spec.finetune.freeze",
        "trains without pretrained weights",
    ),
    # paths that would leave the volume
    (
        "pretrained-path-absolute",
        {"model.pretrained": {"path": "/etc/passwd"}},
        "spec.model.pretrained.path",
        "must be a relative path",
    ),
    (
        "pretrained-path-escape",
        {"model.pretrained": {"path": "models/../../etc/w.pdparams"}},
        "spec.model.pretrained.path",
        "no '..' segment",
    ),
    (
        "train-list-absolute",
        {"dataset.trainList": "/train_list.txt"},
        "spec.dataset.trainList",
        "relative path",
    ),
    ("val-list-escape", {"dataset.valList": "../val_list.txt"}, "spec.dataset.valList", "no '..' segment"),
    (
        "label-list-escape",
        {"dataset.labelList": "../labels.txt"},
        "spec.dataset.labelList",
        "no '..' segment",
    ),
    ("crop-scale-zero", {"dataset.cropScaleMin": 0}, "spec.dataset.cropScaleMin", "greater than 0"),
    (
        "crop-scale-above-one",
        {"dataset.cropScaleMin": 1.5},
        "spec.dataset.cropScaleMin",
        "less than or equal to 1",
    ),
    ("flip-not-bool", {"dataset.horizontalFlip": "no"}, "spec.dataset.horizontalFlip", "boolean"),
    ("train-dir-escape", {"dataset.trainDir": "a/../../b"}, "spec.dataset.trainDir", "no '..' segment"),
    ("dataset-subpath-escape", {"dataset.subPath": ".."}, "spec.dataset.subPath", "no '..' segment"),
    ("output-subpath-absolute", {"output.subPath": "/results"}, "spec.output.subPath", "relative path"),
    (
        "host-path-relative",
        {"dataset.volume": {"hostPath": {"path": "data"}}},
        "spec.dataset.volume.hostPath.path",
        "should match",
    ),
    # freeze stages
    (
        "freeze-stages-missing",
        {"finetune.freeze": "stages"},
        "spec.finetune.freezeStages",
        "required when freeze is 'stages'",
    ),
    (
        "freeze-stages-too-many",
        {"finetune.freeze": "stages", "finetune.freezeStages": 5},
        "spec.finetune.freezeStages",
        "less than or equal to 4",
    ),
    (
        "freeze-stages-zero",
        {"finetune.freeze": "stages", "finetune.freezeStages": 0},
        "spec.finetune.freezeStages",
        "greater than or equal to 1",
    ),
    (
        "freeze-stages-without-stages",
        {"finetune.freeze": "none", "finetune.freezeStages": 2},
        "spec.finetune.freezeStages",
        "only applies when freeze is 'stages'",
    ),
    # warm-up
    (
        "warmup-equals-epochs",
        {"training.epochs": 4, "training.warmupEpochs": 4},
        "spec.training.warmupEpochs",
        "warmupEpochs must be less than epochs",
    ),
    (
        "default-warmup-too-long",
        {"training.epochs": 3},
        "spec.training.warmupEpochs",
        "the default warm-up is 5 epochs",
    ),
    # volumes
    (
        "two-volume-kinds",
        {"dataset.volume": {**PVC, "nfs": {"server": "nfs.local", "path": "/data"}}},
        "spec.dataset.volume",
        "give exactly one volume kind",
    ),
    ("no-volume-kind", {"output.volume": {}}, "spec.output.volume", "give exactly one volume kind"),
    # lists
    (
        "lr-mult-list-short",
        {"finetune.lrMultList": [1, 1, 1]},
        "spec.finetune.lrMultList",
        "at least 5 items",
    ),
    ("lr-mult-list-long", {"finetune.lrMultList": [1] * 6}, "spec.finetune.lrMultList", "at most 5 items"),
    (
        "lr-mult-negative",
        {"finetune.lrMultList": [1, 1, 1, 1, -0.5]},
        "spec.finetune.lrMultList[4]",
        "greater than or equal to 0",
    ),
]


@pytest.fixture(scope="module")
def objects(cluster: Any, crd_installed: str) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.api_client())


def _create(objects: Any, namespace: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    return objects.create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        namespace,
        crd.PLURAL,
        body,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )


def _rejection(call: Any) -> str:
    """The API server's error message for a call that must fail validation."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status in (400, 422), info.value
    return json.loads(info.value.body)["message"]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_spec_is_rejected_naming_the_field(
    objects: Any, namespace: str, changes: dict[str, Any], field: str, fragment: str
) -> None:
    message = _rejection(lambda: _create(objects, namespace, variant(changes), dry_run=True))
    assert field in message, f"the error does not name {field}: {message}"
    assert fragment in message, f"the error lacks {fragment!r}: {message}"


def test_unknown_field_is_rejected_by_strict_field_validation(
    cluster: Any, crd_installed: str, namespace: str
) -> None:
    job = json.dumps(variant({"training.epoch": 3}))  # a typo of epochs
    for verb, expected in [
        (["create", "--validate=strict"], 'unknown field "spec.training.epoch"'),
        (
            ["apply", "--server-side", "--validate=strict"],
            ".spec.training.epoch: field not declared in schema",
        ),
    ]:
        proc = cluster.kubectl(
            *verb, "--dry-run=server", "-f", "-", input=job, namespace=namespace, check=False
        )
        assert proc.returncode != 0, f"kubectl {verb[0]} accepted an unknown field"
        assert expected in proc.stderr, proc.stderr


def test_examples_are_accepted(cluster: Any, crd_installed: str, namespace: str) -> None:
    for path in sorted(crd.EXAMPLES_DIR.glob("*.yaml")):
        if path.name == "kueue-shared-cluster.yaml":
            continue  # Kueue's kinds too: test_kueue_jobs.py checks it beside a running Kueue
        proc = cluster.kubectl(
            "apply",
            "--server-side",
            "--validate=strict",
            "--dry-run=server",
            "-f",
            str(path),
            namespace=namespace,
            check=False,
        )
        assert proc.returncode == 0, f"{path.name} was rejected: {proc.stderr}"
        assert "serverside-applied (server dry run)" in proc.stdout, proc.stdout


def test_the_guides_94_96_run_keeps_its_recipe_through_the_api_server(
    cluster: Any, crd_installed: str, namespace: str
) -> None:
    """Applied and defaulted by the API server, the example maps to the published recipe's numbers."""
    from finetune_operator.trainer_settings import trainer_settings

    from tests.operator.test_crd_schema import assert_guide_2020_recipe

    path = crd.EXAMPLES_DIR / "flowers102-resnet50_vd_ssld-40epochs.yaml"
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", str(path), namespace=namespace, check=False
    )
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(proc.stdout)
    assert stored["spec"]["training"]["warmupEpochs"] == 0  # not replaced by the default 5
    assert_guide_2020_recipe(trainer_settings(stored))


@pytest.mark.parametrize(
    "changes",
    [
        {"model.pretrained": {"url": "https://models.example.com/w.pdparams", "sha256": SHA}},
        {"model.pretrained": {"path": "models/w.pdparams", "sha256": SHA}},
        {"model.pretrained": {}},  # empty: no pretrained weights
        {"model": {"architecture": "ResNet34_vd", "pretrained": {"name": "ResNet34_vd_ssld"}}},
        {"finetune.freeze": "stages", "finetune.freezeStages": 4},
        {"finetune.freeze": "from-scratch"},
        {"dataset.format": "folder", "dataset.numClasses": DELETE, "dataset.trainDir": "images/train"},
        {"dataset.volume": {"csi": {"driver": "s3.csi.example.com", "volumeAttributes": {"bucket": "x"}}}},
        {"training.epochs": 1, "training.warmupEpochs": 0, "training.learningRate": 0.001},
        {"resources.cpu": 4, "resources.memory": "16Gi", "resources.gpus": 8},
        {"resources.nodes": 64, "resources.gpus": 8},
        {"resources.nodes": 2, "resources.gpus": 0},  # CPU ranks (gloo): the local cluster's real node
        {"finetune.lrMultList": [0.1, 0.1, 0.2, 0.2, 0.3]},
        {"template": {"affinity": {"nodeAffinity": {}}, "imagePullSecrets": [{"name": "registry"}]}},
        {
            "template.labels": {"example.com/team": "a-b_c.d", "x": ""},
            "template.annotations": {"Example.com/Note": "anything at all"},
            "template.tolerations": [
                {"operator": "Exists"},
                {"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 9},
            ],
        },
    ],
    ids=[
        "url-with-sha256",
        "path-with-sha256",
        "no-pretrained",
        "ssld-of-same-architecture",
        "freeze-all-stages",
        "from-scratch",
        "folder-format",
        "csi-volume",
        "one-epoch",
        "resources",
        "64-nodes-of-8-gpus",
        "cpu-ranks",
        "lr-mult-list",
        "template",
        "labels-annotations-tolerations",
    ],
)
def test_valid_variants_are_accepted(objects: Any, namespace: str, changes: dict[str, Any]) -> None:
    created = _create(objects, namespace, variant(changes, name="good"), dry_run=True)
    assert created["metadata"]["name"] == "good"


def test_minimal_job_gets_the_documented_defaults(objects: Any, namespace: str) -> None:
    _create(objects, namespace, crd.minimal_job("minimal"))
    spec = objects.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "minimal")[
        "spec"
    ]
    assert spec["model"] == {"architecture": "ResNet50_vd"}
    assert spec["dataset"] == {
        "volume": {"persistentVolumeClaim": {"claimName": "data"}},
        "numClasses": 10,
        "format": "list",
        "trainList": "train_list.txt",
        "valList": "val_list.txt",
        "trainDir": "train",
        "valDir": "val",
        "imageSize": 224,
        "corruptImages": "fail",
        "maxCorruptImages": 10,
        "cropScaleMin": 0.08,
        "horizontalFlip": True,
    }
    assert spec["finetune"] == {"stripMismatched": True, "freeze": "auto"}
    assert spec["training"] == {
        "epochs": 20,
        "batchSize": 32,
        "warmupEpochs": 5,
        "momentum": 0.9,
        "weightDecay": 1e-5,
        "labelSmoothing": 0,
        "amp": "auto",
        "seed": 0,
        "numWorkers": 2,
    }
    assert spec["resources"] == {"gpus": 1, "nodes": 1}
    assert spec["runPolicy"] == {"backoffLimit": 2, "suspend": False, "terminationGracePeriodSeconds": 120}
    assert "template" not in spec and "image" not in spec


def _patch(objects: Any, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return objects.patch_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name, body)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"spec": {"training": {"epochs": 30}}}, "spec.training"),
        ({"spec": {"model": {"architecture": "ResNet18_vd"}}}, "spec.model"),
        ({"spec": {"dataset": {"numClasses": 11}}}, "spec.dataset"),
        ({"spec": {"finetune": {"freeze": "none"}}}, "spec.finetune"),
        ({"spec": {"resources": {"gpus": 2}}}, "spec.resources"),
        ({"spec": {"resources": {"nodes": 2}}}, "spec.resources"),
        ({"spec": {"output": {"subPath": "elsewhere"}}}, "spec.output"),
        ({"spec": {"image": "registry.example.com/trainer:2"}}, "spec.image"),
    ],
    ids=["training", "model", "dataset", "finetune", "resources", "nodes", "output", "image-added"],
)
def test_spec_is_immutable_after_creation(
    objects: Any, namespace: str, patch: dict[str, Any], field: str
) -> None:
    _create(objects, namespace, crd.minimal_job("fixed"))
    message = _rejection(lambda: _patch(objects, namespace, "fixed", patch))
    assert field in message, message
    assert "immutable after creation: delete the FineTuneJob and create it" in message, message


def test_image_cannot_change_or_go(objects: Any, namespace: str) -> None:
    job = crd.minimal_job("imaged")
    job["spec"]["image"] = "registry.example.com/trainer:1"
    _create(objects, namespace, job)
    for patch in ({"spec": {"image": "registry.example.com/trainer:2"}}, {"spec": {"image": None}}):
        message = _rejection(lambda p=patch: _patch(objects, namespace, "imaged", p))
        assert "spec.image" in message and "immutable" in message, message


def test_run_policy_may_change(objects: Any, namespace: str) -> None:
    _create(objects, namespace, crd.minimal_job("policy"))
    policy = {"suspend": True, "backoffLimit": 5, "terminationGracePeriodSeconds": 600}
    patched = _patch(objects, namespace, "policy", {"spec": {"runPolicy": policy}})
    assert patched["spec"]["runPolicy"] == policy
    patched = _patch(objects, namespace, "policy", {"spec": {"runPolicy": {"suspend": False}}})
    assert patched["spec"]["runPolicy"]["suspend"] is False


def test_template_changes_only_while_suspended(objects: Any, namespace: str) -> None:
    job = crd.minimal_job("placed")
    job["spec"]["template"] = {"nodeSelector": {"pool": "a"}}
    _create(objects, namespace, job)

    for patch in (
        {"spec": {"template": {"nodeSelector": {"pool": "b"}}}},
        {"spec": {"template": {"priorityClassName": "high"}}},
        # affinity is free-form: a change inside it must be seen too
        {"spec": {"template": {"affinity": {"nodeAffinity": {"x": 1}}}}},
        {"spec": {"template": None}},
    ):
        message = _rejection(lambda p=patch: _patch(objects, namespace, "placed", p))
        assert "spec.template" in message and "only change while the job is suspended" in message, message

    # Suspending and changing the template in one update is allowed (the change applies to the
    # next attempt), and so is changing it while suspended.
    patched = _patch(
        objects,
        namespace,
        "placed",
        {"spec": {"runPolicy": {"suspend": True}, "template": {"nodeSelector": {"pool": "b"}}}},
    )
    assert patched["spec"]["template"]["nodeSelector"] == {"pool": "b"}
    patched = _patch(objects, namespace, "placed", {"spec": {"template": {"priorityClassName": "high"}}})
    assert patched["spec"]["template"]["priorityClassName"] == "high"
    # Resuming with a new placement in the same update, as Kueue does when it admits a job.
    patched = _patch(
        objects,
        namespace,
        "placed",
        {"spec": {"runPolicy": {"suspend": False}, "template": {"nodeSelector": {"pool": "c"}}}},
    )
    assert patched["spec"]["template"]["nodeSelector"] == {"pool": "c"}
    assert patched["spec"]["runPolicy"]["suspend"] is False
    message = _rejection(
        lambda: _patch(objects, namespace, "placed", {"spec": {"template": {"nodeSelector": None}}})
    )
    assert "only change while the job is suspended" in message


def test_status_is_a_subresource_with_its_own_schema(objects: Any, namespace: str) -> None:
    _create(objects, namespace, crd.minimal_job("statused"))
    # The main endpoint ignores status ...
    _patch(objects, namespace, "statused", {"status": {"phase": "Running"}})
    got = objects.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "statused")
    assert "status" not in got
    # ... the status endpoint takes it, and checks it.
    message = _rejection(
        lambda: objects.patch_namespaced_custom_object_status(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "statused", {"status": {"phase": "Done"}}
        )
    )
    assert "status.phase" in message and "Unsupported value" in message, message
    message = _rejection(
        lambda: objects.patch_namespaced_custom_object_status(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "statused", {"status": {"metrics": {"top1": 94.0}}}
        )
    )
    assert "status.metrics.top1" in message and "less than or equal to 1" in message, message


def _set_status(objects: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    objects.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name, {"status": status}
    )


def test_kubectl_get_shows_the_columns(cluster: Any, objects: Any, namespace: str) -> None:
    _create(objects, namespace, crd.minimal_job("shown"))
    _set_status(
        objects,
        namespace,
        "shown",
        {
            "phase": "Succeeded",
            "attempts": 2,
            "message": "finished 20 epochs",
            "progress": {"epoch": 20, "epochs": 20, "display": "20/20"},
            "metrics": {"top1": 0.9402, "top5": 0.9912, "bestEpoch": 18},
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "Completed",
                    "message": "finished 20 epochs",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        },
    )
    lines = cluster.kubectl("get", "ftj", namespace=namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "EPOCH", "TOP1", "AGE"], lines
    assert lines[1].split()[:4] == ["shown", "Succeeded", "20/20", "0.9402"], lines
    wide = cluster.kubectl("get", "ftj", "-o", "wide", namespace=namespace).stdout.splitlines()
    header = ["NAME", "PHASE", "EPOCH", "TOP1", "AGE", "ATTEMPTS", "NODES", "MODEL", "MESSAGE"]
    assert wide[0].split() == header, wide
    row = wide[1].split()
    assert row[5:] == ["2", "1", "ResNet50_vd", "finished", "20", "epochs"], wide
    # The condition is standard: kubectl wait understands it.
    cluster.kubectl("wait", "--for=condition=Succeeded", "--timeout=10s", "ftj/shown", namespace=namespace)


def test_conditions_are_a_map_keyed_by_type(objects: Any, namespace: str) -> None:
    _create(objects, namespace, crd.minimal_job("conditioned"))
    condition = {
        "type": "Running",
        "status": "True",
        "reason": "PodRunning",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    message = _rejection(
        lambda: _set_status(objects, namespace, "conditioned", {"conditions": [condition, condition]})
    )
    assert "status.conditions[1]" in message and "Duplicate value" in message, message


def test_kubectl_explain_teaches_the_fields(cluster: Any, crd_installed: str) -> None:
    # The API server publishes a new CRD's OpenAPI document a moment after it is established.
    deadline = time.monotonic() + 60
    while True:
        proc = cluster.kubectl("explain", "ftj.spec.training", check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # explain wraps lines
    assert "KIND: FineTuneJob" in text
    assert "The optimisation schedule: momentum SGD with L2 weight decay" in text
    for field, phrase in [
        ("epochs", "Passes over the training data"),
        ("warmupEpochs", "Epochs of linear warm-up"),
        ("learningRate", "Peak learning rate"),
        ("amp", "Automatic mixed precision"),
    ]:
        assert field in text and phrase in text, f"explain ftj.spec.training lacks {field}: {phrase}"
    pretrained = " ".join(cluster.kubectl("explain", "ftj.spec.model.pretrained.url").stdout.split())
    assert "An https:// URL of a .pdparams file" in pretrained
    grace = " ".join(
        cluster.kubectl("explain", "ftj.spec.runPolicy.terminationGracePeriodSeconds").stdout.split()
    )
    assert "Seconds between SIGTERM and SIGKILL" in grace and "Default: 120" in grace


def test_status_the_operator_writes_is_stored_unpruned(objects: Any, namespace: str) -> None:
    """What the operator derives from a trainer's result and progress fits the status schema: the
    API server accepts it and keeps every field (unknown fields would be pruned silently)."""
    from finetune_contract import decode_result, encode_result, format_progress, parse_last_progress
    from finetune_operator import job_status

    from tests.contract.sample import SAMPLE_RESULT

    now = "2026-01-01T00:00:00Z"
    result = decode_result(encode_result(SAMPLE_RESULT))
    progress = parse_last_progress(
        format_progress(3, 4, top1=0.8, top5=0.95, loss=0.41, imagesPerSecond=310.2)
    )
    update = job_status.StatusUpdate().transition({}, "Succeeded", "Completed", "finished 20 epochs", now, 1)
    update.fields.update(
        attempts=1,
        podName="stored-attempt-1",
        startTime=now,
        completionTime=now,
        progress=job_status.progress_at_success(result, job_status.progress_from_record(progress, now), now),
        metrics=job_status.metrics_from_result(result),
        finetune=job_status.finetune_from_result(result),
    )
    _create(objects, namespace, crd.minimal_job("stored"))
    _set_status(objects, namespace, "stored", update.fields)
    stored = objects.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "stored")[
        "status"
    ]
    assert stored == update.fields
    assert stored["finetune"]["freeze"]["rule"] == 1
    assert stored["progress"]["display"] == "4/4"
