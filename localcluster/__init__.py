"""The real local Kubernetes the demo, the benchmarks and the tests use: etcd, kube-apiserver, the
controller manager, the scheduler, kwok's fake GPU nodes and a real node (kubelet + containerd,
realnode/), started from pinned binaries without Docker (README.md). What they need, in one place:

    cluster = localcluster.start(state_dir)     # or localcluster.attach(state_dir) for a running one
    cluster.kubectl("get", "nodes"); cluster.drive_pod(...); cluster.create_node_pvc(...)
    localcluster.stop(state_dir)                # also cluster.stop()

and the processes started beside a cluster: the real operator as a local process (OperatorProcess),
the Helm chart's operator pods on the real node (install_chart, ChartOperator), an HTTPS file server
(serve_https, make_self_signed).
"""

from localcluster import realnode
from localcluster.cluster import DEFAULT_STATE_DIR, Cluster, attach
from localcluster.components import etcd_compact, start_component, stop_component
from localcluster.errors import ClusterError
from localcluster.helm import (
    CHART,
    ChartOperator,
    HelmNotFound,
    fullname,
    helm,
    install_chart,
    service_account_kubeconfig,
)
from localcluster.https_files import make_self_signed, serve_https
from localcluster.kube_rest import KubeError, KubeRest
from localcluster.kwok import GPU_RESOURCE, GPUS_PER_NODE, drive_annotations
from localcluster.operator_process import OperatorProcess
from localcluster.processes import free_port
from localcluster.start import REAL_NODE_GPUS, start
from localcluster.stop import stop

__all__ = [
    "CHART",
    "DEFAULT_STATE_DIR",
    "GPUS_PER_NODE",
    "GPU_RESOURCE",
    "ChartOperator",
    "Cluster",
    "ClusterError",
    "HelmNotFound",
    "KubeError",
    "KubeRest",
    "OperatorProcess",
    "REAL_NODE_GPUS",
    "attach",
    "drive_annotations",
    "etcd_compact",
    "free_port",
    "fullname",
    "helm",
    "install_chart",
    "make_self_signed",
    "realnode",
    "serve_https",
    "service_account_kubeconfig",
    "start",
    "start_component",
    "stop",
    "stop_component",
]
