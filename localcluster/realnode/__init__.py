"""A real node in the local cluster: kubelet v1.35.4 with containerd, runc and bridge networking
(README.md, "The real node"). node.py sets it up, teardown.py undoes it, containerd.py holds the
runtime's private configuration, hoststate.py the host-wide values restored after the last node."""

from localcluster.realnode.node import LABEL, NODE_NAME, NodeError, RealNode, host_names, pod_spec_extras
from localcluster.realnode.teardown import cleanup_host, drain, node_processes

__all__ = [
    "LABEL",
    "NODE_NAME",
    "NodeError",
    "RealNode",
    "cleanup_host",
    "drain",
    "host_names",
    "node_processes",
    "pod_spec_extras",
]
