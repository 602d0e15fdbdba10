"""Property-based fuzzing against the real API server (hypothesis).

* Every generated FineTuneJob spec that the API server accepts (server-side dry-run create,
  strict field validation, against the CRD in crds/) must give valid trainer settings and a pod
  that the API server accepts too (dry-run create in a namespace enforcing Pod Security
  "restricted"), or be refused by the operator itself with the field named (hostPath volumes,
  which this installation does not allow by default). A spec the CRD lets through but a pod
  cannot carry would fail only once the operator tries, long after `kubectl apply` said yes.
  Every spec is also rendered as a multi-node attempt (2..64 nodes) and its rank pods (0, 1 and
  the last) go through the same dry run, although this version still refuses nodes > 1.
* Whatever a trainer writes as its result (tests/contract/strategies.py: results of every type
  and range, and hostile JSON: wrong types, huge or non-finite numbers, unknown keys), the
  status patch the reconciler sends for it is one the API server accepts (dry-run patch of a
  real job's status subresource). tests/operator/test_job_status.py checks the same mapping
  against a Python reading of the schema without a cluster; this is the real schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from finetune_contract import SettingsError, encode_result, format_progress
from finetune_operator.api import LABEL_RANK
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import ApiStatus
from finetune_operator.pod import render_attempt
from finetune_operator.refusal import classify
from finetune_operator.spec_checks import refused
from finetune_operator.trainer_settings import trainer_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from localcluster import KubeError, KubeRest
from tests.contract.strategies import hostile, valid_results, wrong
from tests.operator import crd
from tests.operator.reconcile_kit import NS, World, pod
from tests.operator.spec_strategies import specs

CONFIG = OperatorConfig()
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


JOBS = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{{ns}}/{crd.PLURAL}"


@pytest.fixture(scope="module")
def api(cluster: Any, crd_installed: str) -> KubeRest:
    """Plain REST with the admin's certificate: the bodies go to the API server exactly as the
    operator would send them (no client-side models in between)."""
    return KubeRest(Path(cluster.kubeconfig))


@pytest.fixture
def restricted(cluster: Any, namespace: str) -> str:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def _refusal(api: KubeRest, method: str, path: str, body: Any, **params: str) -> str | None:
    """None if the API server accepts the request (as a dry run), else its message (400, 403 and
    422 only: anything else is not about the object)."""
    content_type = params.pop("_type", "application/json")
    try:
        api.request(method, path, body, params={"dryRun": "All", **params}, content_type=content_type)
    except KubeError as exc:
        if exc.status not in (400, 403, 422):
            raise
        return str(exc)
    return None


@settings(FUZZ, max_examples=400)
@given(spec=specs, more_nodes=st.integers(2, 64))
def test_every_spec_the_api_server_accepts_runs_as_a_pod_it_accepts(
    api: KubeRest, restricted: str, spec: dict, more_nodes: int
) -> None:
    job = {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "FineTuneJob", "metadata": {"name": "fuzz"}}
    job["spec"] = spec
    try:
        accepted = api.request(
            "POST", JOBS.format(ns=restricted), job, params={"dryRun": "All", "fieldValidation": "Strict"}
        )
    except KubeError as exc:
        if exc.status not in (400, 422):
            raise
        event("spec refused by the API server")
        return
    event("spec accepted")
    accepted["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"  # a dry run assigns none
    try:
        trainer_settings(accepted)
    except SettingsError as exc:
        pytest.fail(f"the API server accepted a spec the trainer cannot run: {exc}\n{json.dumps(spec)}")
    # Multi-node jobs run as gangs: the only refusal left, at any node count, is a hostPath.
    why = refused(accepted, CONFIG)
    nodes = accepted["spec"]["resources"]["nodes"]
    if why is not None:
        event("refused by the operator (hostPath)")
        assert "hostPath" in json.dumps(spec) and why.startswith("spec.") and ".hostPath:" in why
        return
    # The spec as it is, and (a single-node one) as a multi-node job: nodes is independent of
    # every other field, so the CRD accepts it with any 2..64 as well.
    variants = [accepted]
    if nodes == 1:
        variants.append(copy.deepcopy(accepted))
        variants[1]["spec"]["resources"]["nodes"] = more_nodes
    for variant in variants:
        count = variant["spec"]["resources"]["nodes"]
        pods = render_attempt(variant, 1, CONFIG)
        assert len(pods) == count
        for rank in sorted({0, 1, count - 1} & set(range(count))):  # ranks 1.. differ only in the number
            _pod_accepted(api, restricted, pods[rank], spec)


def _pod_accepted(api: KubeRest, restricted: str, manifest: dict[str, Any], spec: dict[str, Any]) -> None:
    message = _refusal(api, "POST", f"/api/v1/namespaces/{restricted}/pods", manifest)
    if message is not None and 'restricted volume type "nfs"' in message:
        # "restricted" allows no nfs volume (the CRD says so): the operator must call it that.
        event("nfs refused by Pod Security restricted")
        assert 'violates PodSecurity "restricted' in message
        status = ApiStatus(403, "Forbidden", message.split(": ", 2)[-1])
        assert classify(status, "fuzz-attempt-1", restricted, lambda: True).reason == "PodSecurityViolation"
        return
    assert message is None, (
        f"the API server accepted the job but refuses its pod: {message}\nspec: {json.dumps(spec)}"
    )
    event(f"pod accepted ({'rank 0' if manifest['metadata']['labels'][LABEL_RANK] == '0' else 'rank >= 1'})")


# --------------------------------------------------------------------------------------------
# Trainer results -> status
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_job(cluster: Any, crd_installed: str) -> tuple[str, str]:
    """A real FineTuneJob whose status subresource the patches are tried on (dry run)."""
    namespace = "fuzz-status"
    cluster.kubectl("create", "namespace", namespace, check=False)
    manifest = crd.minimal_job("status-target")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), namespace=namespace)
    yield namespace, "status-target"
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def patch_for(termination_message: str | None, log: str | None) -> dict[str, Any]:
    """The status patch the reconciler sends when the attempt's pod succeeded with this
    termination message, or runs and logged this (the fake API checks nothing: the real API
    server judges)."""
    world = World()
    world.kube.check_status_schema = False
    world.settle()
    if log is not None:
        world.run(1)
        world.kube.logs[(NS, pod(1))] = log
    else:
        world.kube.finish(NS, pod(1), 0, termination_message or "")
    world.clock.advance(60)
    before = len(world.kube.writes)
    world.reconcile()
    patches = [w.body for w in world.kube.writes[before:] if w.verb == "patch_status"]
    assert patches, "the pass wrote no status"
    return patches[-1]


def accepts(api: KubeRest, target: tuple[str, str], patch: dict[str, Any]) -> str | None:
    """None if the API server takes the patch on the real job's status, else its message."""
    namespace, name = target
    body = {"status": copy.deepcopy(patch)}
    path = f"{JOBS.format(ns=namespace)}/{name}/status"
    return _refusal(api, "PATCH", path, body, _type="application/merge-patch+json")


@FUZZ
@given(result=valid_results(text_size=3000, list_size=300, big=True))
def test_every_trainer_result_maps_to_a_status_the_api_server_accepts(
    api: KubeRest, real_job: Any, result: Any
) -> None:
    patch = patch_for(encode_result(result), None)
    assert patch.get("phase") == "Succeeded"
    message = accepts(api, real_job, patch)
    assert message is None, f"the API server refused the status: {message}\n{json.dumps(patch)[:2000]}"


@FUZZ
@given(data=hostile)
def test_whatever_the_pod_wrote_maps_to_a_status_the_api_server_accepts(
    api: KubeRest, real_job: Any, data: dict
) -> None:
    text = json.dumps(data)
    patch = patch_for(text, None)
    message = accepts(api, real_job, patch)
    assert message is None, f"the API server refused the status: {message}\n{json.dumps(patch)[:2000]}"


@FUZZ
@given(
    record=st.dictionaries(
        st.sampled_from(["epoch", "epochs", "top1", "top5", "loss", "imagesPerSecond"]), wrong
    )
)
def test_whatever_a_progress_line_says_maps_to_a_status_the_api_server_accepts(
    api: KubeRest, real_job: Any, record: dict
) -> None:
    record.setdefault("epoch", 1)
    line = "FINETUNE_PROGRESS " + json.dumps(record)
    patch = patch_for(None, f"{format_progress(0, 4)}\n{line}\n")
    message = accepts(api, real_job, patch)
    assert message is None, f"the API server refused the status: {message}\n{json.dumps(patch)[:2000]}"
