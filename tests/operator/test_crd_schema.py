"""The FineTuneJob CRD as a file: fixed names, a structural schema that documents every field,
defaults, printer columns. No cluster needed; the API server's own verdict is in
test_crd_validation.py, the CRD's agreement with the trainer contract in tests/contract/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from finetune_operator import api

from tests.operator import crd


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under `node` with its path (items as [], map values as {})."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_fixed_names() -> None:
    # The names users rely on (api-sketch), as the operator spells them and as the CRD declares them.
    assert (api.GROUP, api.VERSION, api.KIND, api.PLURAL) == (
        "finetune.paddle.dev",
        "v1alpha1",
        "FineTuneJob",
        "finetunejobs",
    )
    doc = crd.load_crd()
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["kind"] == "CustomResourceDefinition"
    assert doc["metadata"]["name"] == crd.CRD_NAME
    spec = doc["spec"]
    assert spec["group"] == crd.GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (api.KIND, api.PLURAL, api.SINGULAR)
    assert names["shortNames"] == list(api.SHORT_NAMES) == ["ftj"]
    (version,) = spec["versions"]
    assert version["name"] == crd.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_every_schema_node_has_a_description() -> None:
    # metadata is the one exception: the API server forbids anything but its type there.
    missing = [
        path or "<root>"
        for path, n in _walk(crd.schema(), "")
        if path != "metadata" and not str(n.get("description", "")).strip()
    ]
    assert not missing, f"schema nodes without a description: {', '.join(missing)}"


def test_defaults_are_documented() -> None:
    """`kubectl explain` does not print defaults, so each description states its own."""
    for path, n in _walk(crd.schema(), ""):
        if "default" in n and n["default"] != {}:
            assert "Default: " in n["description"], f"{path}: description does not state the default"


def test_schema_is_structural() -> None:
    """Every node says its type (or is int-or-string / free-form), as the API server demands."""
    untyped = [
        path or "<root>"
        for path, n in _walk(crd.schema(), "")
        if "type" not in n and not n.get("x-kubernetes-int-or-string")
    ]
    assert not untyped, f"schema nodes without a type: {', '.join(untyped)}"


def test_every_cel_rule_explains_itself() -> None:
    rules = [(path, r) for path, n in _walk(crd.schema(), "") for r in n.get("x-kubernetes-validations", [])]
    assert len(rules) >= 15, "expected the CEL rules of the agreed field list"
    for path, rule in rules:
        assert str(rule.get("message", "")).strip(), f"{path}: CEL rule {rule['rule']!r} has no message"


def test_cel_strings_and_lists_are_bounded() -> None:
    """Strings checked by CEL carry maxLength, so the API server's cost estimate stays in budget."""
    for path, n in _walk(crd.schema(), ""):
        if n.get("type") == "string" and n.get("x-kubernetes-validations"):
            assert "maxLength" in n, f"{path}: a string with CEL rules needs maxLength"
        if n.get("type") == "array" and path.startswith("spec."):
            assert "maxItems" in n, f"{path}: a spec list needs maxItems"


def test_sections_with_defaults_default_to_an_empty_object() -> None:
    """Without `default: {}` on the parent, nested defaults would not apply to a job omitting it."""
    for section in ("model", "finetune", "training", "resources", "runPolicy"):
        assert crd.node(f"spec.{section}")["default"] == {}, section
    assert crd.schema()["properties"]["spec"]["required"] == ["dataset", "output"]


def test_status_fixed_fields() -> None:
    assert crd.node("status.phase")["enum"] == list(api.PHASES)
    assert api.PHASES == ("Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended")
    assert set(api.CONDITION_TYPES) == {"Running", "Succeeded", "Failed", "Suspended"}
    for name in ("top1", "top5"):
        metric = crd.node(f"status.metrics.{name}")
        assert (metric["type"], metric["minimum"], metric["maximum"]) == ("number", 0, 1)
    assert crd.node("status.metrics.bestEpoch")["type"] == "integer"
    conditions = crd.node("status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert "type" in item["required"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_printer_columns() -> None:
    (version,) = crd.load_crd()["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    default = [(c["name"].upper(), c["jsonPath"]) for c in columns if c.get("priority", 0) == 0]
    assert default == [
        ("PHASE", ".status.phase"),
        ("EPOCH", ".status.progress.display"),
        ("TOP1", ".status.metrics.top1"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    wide = [(c["name"].upper(), c["jsonPath"]) for c in columns if c.get("priority", 0) == 1]
    assert wide == [
        ("ATTEMPTS", ".status.attempts"),
        ("NODES", ".spec.resources.nodes"),
        ("MODEL", ".spec.model.architecture"),
        ("MESSAGE", ".status.message"),
    ]
    # Every column's path exists in the schema.
    for column in columns:
        if column["jsonPath"].startswith(".metadata"):
            continue
        crd.node(column["jsonPath"].lstrip("."))


def test_examples_are_fine_tune_jobs_or_claims() -> None:
    docs = crd.example_docs()
    names = {p.name for p, _ in docs}
    assert {
        "flowers102-resnet50_vd.yaml",
        "flowers102-resnet50_vd_ssld.yaml",
        "flowers102-resnet50_vd_ssld-40epochs.yaml",
        "flowers102-pvc.yaml",
        "demo-digits.yaml",
        "flowers102-resnet50_vd-2x8gpu.yaml",
    } <= names
    kueue = {"ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass"}
    for path, doc in docs:
        if path.name == "kueue-shared-cluster.yaml" and doc["kind"] in kueue:
            assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta2", path
            continue
        assert doc["kind"] in {"FineTuneJob", "PersistentVolumeClaim"}, path
        if doc["kind"] == "FineTuneJob":
            assert doc["apiVersion"] == f"{crd.GROUP}/{crd.VERSION}", path


def test_the_multi_node_example_keeps_the_recipes_global_batch() -> None:
    (job,) = [d for p, d in crd.example_docs() if p.name == "flowers102-resnet50_vd-2x8gpu.yaml"]
    (single,) = [d for p, d in crd.example_docs() if p.name == "flowers102-resnet50_vd.yaml"]
    resources, training = job["spec"]["resources"], job["spec"]["training"]
    assert (resources["nodes"], resources["gpus"]) == (2, 8)
    global_batch = training["batchSize"] * resources["nodes"] * resources["gpus"]
    assert global_batch == single["spec"]["training"]["batchSize"] * single["spec"]["resources"]["gpus"]
    assert training["learningRate"] == single["spec"]["training"]["learningRate"]


def test_flowers102_examples_follow_the_guides_recipe() -> None:
    jobs = {p.name: d for p, d in crd.example_docs() if d["kind"] == "FineTuneJob"}
    claims = {d["metadata"]["name"] for _, d in crd.example_docs() if d["kind"] == "PersistentVolumeClaim"}
    pretrained = {}
    for file in ("flowers102-resnet50_vd.yaml", "flowers102-resnet50_vd_ssld.yaml"):
        spec = jobs[file]["spec"]
        assert spec["model"]["architecture"] == "ResNet50_vd"
        assert spec["dataset"]["numClasses"] == 102
        assert spec["dataset"]["format"] == "list"
        t = spec["training"]
        assert (t["epochs"], t["batchSize"], t["learningRate"], t["warmupEpochs"]) == (20, 32, 0.0125, 5)
        assert spec["dataset"]["volume"]["persistentVolumeClaim"]["claimName"] in claims
        assert spec["output"]["volume"]["persistentVolumeClaim"]["claimName"] in claims
        pretrained[file] = spec["model"]["pretrained"]["name"]
    assert pretrained == {
        "flowers102-resnet50_vd.yaml": "ResNet50_vd",
        "flowers102-resnet50_vd_ssld.yaml": "ResNet50_vd_ssld",
    }


# The PaddleClas guide's 94.96% run (April 2020 SSLD finetune config; paddleclas-facts.md).
GUIDE_2020_RECIPE = {
    "epochs": 40,
    "batchSize": 32,
    "learningRate": 0.00375,
    "warmupEpochs": 0,
    "momentum": 0.9,
    "weightDecay": 1e-6,
    "labelSmoothing": 0.1,
    "lrMultList": [0.1, 0.1, 0.2, 0.2, 0.3],
}


def assert_guide_2020_recipe(settings) -> None:
    """Trainer settings that are the guide's 94.96% recipe, number for number."""
    t, f = settings.training, settings.finetune
    got = {key: getattr(t, key) for key in GUIDE_2020_RECIPE if hasattr(t, key)} | {
        "lrMultList": f.lrMultList
    }
    assert got == GUIDE_2020_RECIPE
    assert (f.freeze, f.stripMismatched) == ("none", True)
    assert settings.model.architecture == "ResNet50_vd"
    assert settings.model.pretrained.name == "ResNet50_vd_ssld"
    assert settings.dataset.numClasses == 102


def test_the_guides_94_96_run_maps_to_its_recipe() -> None:
    """Every setting of the published run is expressible in a FineTuneJob and reaches the trainer
    (test_crd_validation.py checks the same after the API server has defaulted the job)."""
    from finetune_operator.trainer_settings import trainer_settings

    jobs = {p.name: d for p, d in crd.example_docs() if d["kind"] == "FineTuneJob"}
    job = {
        **jobs["flowers102-resnet50_vd_ssld-40epochs.yaml"],
        "metadata": {"name": "j", "namespace": "n", "uid": "u-1"},
    }
    assert_guide_2020_recipe(trainer_settings(job))
    header = crd.EXAMPLES_DIR.joinpath("flowers102-resnet50_vd_ssld-40epochs.yaml").read_text()
    assert "94.96%" in header  # each example says the figure it was published with
    for name, figure in (
        ("flowers102-resnet50_vd.yaml", "0.9402"),
        ("flowers102-resnet50_vd_ssld.yaml", "0.9500"),
    ):
        assert figure in crd.EXAMPLES_DIR.joinpath(name).read_text(), name


def test_demo_job_runs_on_the_local_clusters_real_node() -> None:
    jobs = {p.name: d for p, d in crd.example_docs() if d["kind"] == "FineTuneJob"}
    spec = jobs["demo-digits.yaml"]["spec"]
    assert spec["model"]["architecture"] == "ResNet18_vd"
    assert spec["model"]["pretrained"]["url"].startswith("https://")
    assert len(spec["model"]["pretrained"]["sha256"]) == 64
    assert spec["resources"]["gpus"] == 1  # the real node advertises GPUs; the trainer uses the CPU
    assert spec["template"]["nodeSelector"] == {"pfo.dev/real-node": "true"}
    assert {
        "key": "pfo.dev/real-node",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in spec["template"]["tolerations"]
    assert spec["training"]["warmupEpochs"] < spec["training"]["epochs"]


def test_official_pretrained_names_are_the_trainers() -> None:
    """Every name the CRD accepts is one the trainer can download, and the other way round."""
    from finetune_trainer.pretrained import OFFICIAL_NAMES  # imports Paddle: a few seconds

    assert set(crd.node("spec.model.pretrained.name")["enum"]) == set(OFFICIAL_NAMES)
