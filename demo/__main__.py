"""`make demo` (`python -m demo`): a FineTuneJob end to end on the local control plane.

Starts (or reuses) the local cluster in .cluster/ (with its real node: a kubelet with
containerd), imports the operator and trainer images into the node, applies the CRD, installs
the chart (the operator's pod runs on the node from its image), makes pretrained weights and
serves them over HTTPS, writes the finetune data into the node's volumes, applies
examples/demo-digits.yaml (the trainer runs in a container of the trainer image), shows
`kubectl get ftj -w` until the job finishes, and prints its top-1 and what to try next. The
cluster, the operator and the HTTPS server stay running; `make cluster-down` stops them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import localcluster
from demo import assets
from localcluster import DEFAULT_STATE_DIR, ChartOperator, Cluster, install_chart

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"
EXAMPLE = ROOT / "examples" / "demo-digits.yaml"
NAMESPACE = "default"  # the example names none: `kubectl get ftj` shows it without -n
OPERATOR_NAMESPACE = "pfo-system"
RELEASE = "pfo"
CA_FILE = "weights-ca.pem"  # the weights server's certificate, in the dataset volume (/data)
DATA_CLAIM, OUTPUT_CLAIM = "demo-digits", "demo-output"  # the claims the example names
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - STARTED:5.0f}s] {message}", flush=True)


def ensure_cluster(state_dir: Path) -> Cluster:
    running = localcluster.attach(state_dir)
    if running is not None and running.healthy():
        say(f"reusing the local cluster in {state_dir}")
        return running
    say("starting the local cluster (etcd, kube-apiserver, controllers, scheduler, kwok, a real node) ...")
    cluster = localcluster.start(state_dir)  # no owner: it stays up for exploration
    say(f"cluster ready in {cluster.state['start_seconds']}s")
    return cluster


def start_operator(cluster: Cluster) -> ChartOperator:
    """`helm upgrade --install` the chart: its Deployment runs the operator image on the real node
    with the chart's ServiceAccount. It watches only the demo's namespace (RBAC granted there
    alone; tests run with PFO_REUSE_CLUSTER=1 in their own namespaces are not picked up), reads
    the trainer's progress every second (the chart's default is 30 s) and hands trainers the
    weights server's certificate from the dataset volume."""
    return install_chart(
        cluster, OPERATOR_NAMESPACE,
        "--set", f"watchNamespaces={{{NAMESPACE}}}",
        "--set", "operator.progressPollSeconds=1",
        "--set-string", f"operator.trainerEnv.REQUESTS_CA_BUNDLE=/data/{CA_FILE}",
        release=RELEASE,
    )  # fmt: skip


def job_manifest(url: str, sha256: str) -> dict[str, Any]:
    """examples/demo-digits.yaml with the served weights' address and checksum (the file on disk
    keeps its placeholders)."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["model"]["pretrained"] = {"url": url, "sha256": sha256}
    return job


def get_job(cluster: Cluster, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "ftj", name, "-o", "json", namespace=NAMESPACE, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def remove_previous_run(cluster: Cluster, name: str, output: Path) -> None:
    """A second `make demo` runs the job afresh: delete the old job (the garbage collector removes
    its pods) and what its trainer wrote to the output volume."""
    if get_job(cluster, name) is not None:
        say(f"deleting the previous ftj/{name}")
        cluster.kubectl("delete", "ftj", name, "--wait=true", "--timeout=60s", namespace=NAMESPACE)
        cluster.kubectl(
            "wait", "--for=delete", "pod", "-l", f"finetune.paddle.dev/job-name={name}",
            "--timeout=60s", namespace=NAMESPACE, check=False,
        )  # fmt: skip
    for child in output.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def watch_until_finished(cluster: Cluster, name: str, timeout: float) -> dict[str, Any]:
    """Stream `kubectl get ftj -w` to the terminal until the job is Succeeded or Failed."""
    kubectl = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "-n", NAMESPACE]
    print(f"\n$ kubectl get ftj {name} -w", flush=True)
    watch = subprocess.Popen([*kubectl, "get", "ftj", name, "-w"], stdin=subprocess.DEVNULL)
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = (get_job(cluster, name) or {}).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                time.sleep(1.5)  # let the watch print the final row
                break
            time.sleep(1)
    finally:
        watch.terminate()
        watch.wait(10)
    print(flush=True)
    return status


def explain_failure(cluster: Cluster, name: str, status: dict[str, Any], operator: ChartOperator) -> None:
    print(f"ftj/{name} did not succeed: phase {status.get('phase', '(none yet)')}, reason "
          f"{status.get('reason')}: {status.get('message')}\n", file=sys.stderr)  # fmt: skip
    print(cluster.kubectl("describe", "ftj", name, namespace=NAMESPACE, check=False).stdout, file=sys.stderr)
    if status.get("podName"):
        logs = cluster.kubectl("logs", status["podName"], "--tail=30", namespace=NAMESPACE, check=False)
        print(f"--- last lines of the trainer's log ({status['podName']}):\n{logs.stdout}{logs.stderr}",
              file=sys.stderr)  # fmt: skip
    print(f"--- last lines of the operator's log:\n{operator.log_tail(30)}", file=sys.stderr)


def next_steps(cluster: Cluster, name: str, operator: ChartOperator, output: Path) -> str:
    def rel(path: Path | str) -> str:
        return os.path.relpath(path, Path.cwd())

    k = f"kubectl --kubeconfig {rel(cluster.kubeconfig)}"
    # The job's folder is <namespace>/<name>/<uid>: a job recreated with the same name gets a new one.
    uid = ((get_job(cluster, name) or {}).get("metadata") or {}).get("uid") or "*"
    job_output, venv_bin = f"{rel(output)}/{NAMESPACE}/{name}/{uid}", rel(Path(sys.executable).parent)
    val_list = f"{rel(output.parent)}/{DATA_CLAIM}/val_list.txt"
    steps = [
        ("the pinned kubectl and helm", f"export PATH={cluster.bin_dir}:$PATH"),
        ("the job: spec, status, freeze decision and evidence, conditions, events",
         f"{k} describe ftj {name}"),
        ("every job with attempts, model and message", f"{k} get ftj -o wide"),
        ("the FineTuneJob fields, documented by the CRD", f"{k} explain ftj.spec.training"),
        ("the trainer's log", f"{k} logs {name}-attempt-1"),
        ("the pods: the operator's on the real node, the trainer's", f"{k} get pods -A -o wide"),
        ("the operator's Prometheus metrics (at its pod's IP)",
         f"curl -s {operator.metrics_url()} | grep '^finetune'"),
        ("the job's output (its folder is named by namespace, name and uid): training_curves.png, "
         "confusion_matrix.png, per_class.json, vdl/, inference/",
         f"ls {job_output}/"),
        ("the run in VisualDL (http://127.0.0.1:8040)",
         f"{venv_bin}/visualdl --logdir {job_output}/vdl --host 127.0.0.1 --port 8040"),
        ("classify digits with the exported model",
         f"{venv_bin}/finetune-predict {job_output}/inference --list {val_list}"),
        ("the operator's log", f"{k} -n {OPERATOR_NAMESPACE} logs -f deploy/{operator.name}"),
        ("the images in the node's containerd",
         f"ctr --address {rel(cluster.state_dir)}/node/containerd/containerd.sock -n k8s.io images ls"),
        ("stop the cluster (and everything on it) and the weights server", "make cluster-down"),
    ]  # fmt: skip
    lines = "".join(f"\n  # {why}\n  {command}" for why, command in steps)
    return f"\nWhat to try next (the cluster, the operator and the weights server keep running):{lines}\n"


def finish_pretraining(proc: subprocess.Popen[bytes] | None, weights: Path, log_path: Path) -> None:
    if proc is None:
        return
    if proc.wait() != 0 or not weights.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"pretraining the demo's weights failed ({log_path}):\n{tail}")
    done = [line for line in log_path.read_text().splitlines() if line.startswith("PRETRAINED ")]
    top1 = json.loads(done[-1].split(" ", 1)[1])["top1"]
    say(f"pretrained: top-1 {top1:.3f} on held-out digits {assets.PRETRAIN_CLASSES} -> {weights.name}")


def run(state_dir: Path, timeout: float) -> int:
    weights = assets.weights_path()
    pretrain_log = assets.cache_dir() / "pretrain.log"
    pretraining = None
    if weights.is_file():
        say(f"reusing pretrained weights {weights}")
    else:  # the longest step on a fresh machine: runs while the cluster starts
        say(f"pretraining ResNet18_vd on digits {assets.PRETRAIN_CLASSES} in the background, once "
            f"(cached in {weights.parent}; log {pretrain_log}) ...")  # fmt: skip
        pretraining = assets.start_pretraining(weights, pretrain_log)
    try:
        cluster = ensure_cluster(state_dir)
        t0 = time.monotonic()
        images = cluster.load_images(["operator", "trainer"])
        refs = ", ".join(i.reference for i in images)
        say(f"images in the real node's containerd ({time.monotonic() - t0:.0f}s): {refs}")
        (crd,) = cluster.install_crds(CRD_DIR)
        say(f"CRD {crd} established")

        weights.parent.mkdir(parents=True, exist_ok=True)
        port, cert = assets.https_server(cluster, weights.parent)
        url = f"https://{cluster.pod_host_ip()}:{port}/{weights.name}"
        say(f"serving the weights at {url} (self-signed certificate {cert})")

        operator = start_operator(cluster)
        pod = operator.pod()
        say(f"operator pod {OPERATOR_NAMESPACE}/{pod['metadata']['name']} running on node "
            f"{pod['spec']['nodeName']} (helm release {RELEASE}, the chart's ServiceAccount)")  # fmt: skip

        cluster.kubectl(
            "label", "namespace", NAMESPACE, "--overwrite", "pod-security.kubernetes.io/enforce=restricted"
        )
        data = cluster.create_node_pvc(NAMESPACE, DATA_CLAIM)
        output = cluster.create_node_pvc(NAMESPACE, OUTPUT_CLAIM)
        name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        remove_previous_run(cluster, name, output)
        info = assets.write_finetune_data(data)
        shutil.copy(cert, data / CA_FILE)
        say(f"finetune data: digits {info['classes']}, {info['train']} train / {info['val']} val images "
            f"in PVC {DATA_CLAIM} ({os.path.relpath(data, Path.cwd())})")  # fmt: skip
        finish_pretraining(pretraining, weights, pretrain_log)
    finally:
        if pretraining is not None and pretraining.poll() is None:  # we failed before it finished
            pretraining.terminate()
            pretraining.wait()

    manifest = job_manifest(url, assets.sha256_of(weights))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), namespace=NAMESPACE)
    say(f"applied {os.path.relpath(EXAMPLE, ROOT)} (url and sha256 of the served weights filled in)")

    status = watch_until_finished(cluster, name, timeout)
    if status.get("phase") != "Succeeded":
        explain_failure(cluster, name, status, operator)
        return 1
    metrics, freeze = status.get("metrics") or {}, (status.get("finetune") or {}).get("freeze") or {}
    decided = f"auto, rule {freeze.get('rule')}" if freeze.get("decidedBy") == "auto" else "set in the spec"
    say(
        f"ftj/{name} Succeeded: TOP1 {metrics.get('top1'):.4f} (top-5 {metrics.get('top5'):.4f}, best epoch "
        f"{metrics.get('bestEpoch')}/{metrics.get('epochsRun')}, trainer {metrics.get('durationSeconds')}s); "
        f"freeze {freeze.get('strategy')} ({decided}); "
        f"stripped {(status.get('finetune') or {}).get('strippedParameters')}"
    )
    print(next_steps(cluster, name, operator, output))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    code = run(args.state_dir.resolve(), args.timeout)
    say(f"done in {time.monotonic() - STARTED:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
