"""The local Kubernetes cluster from the command line (`make cluster-up`, `make cluster-down`).

python -m localcluster ACTION [--state-dir DIR]:
    up             start a cluster in --state-dir (default .cluster/) unless one runs there; print
                   its kubeconfig path (--no-real-node: without the real kubelet node)
    down           stop it and remove its state
    status         exit 0 if it runs and answers, 1 if not
    install-chart  install the Helm chart into the running cluster with the locally built operator
                   image, its pod on the real node; wait until it runs and print the pod's name
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localcluster.cluster import DEFAULT_STATE_DIR, attach
from localcluster.helm import install_chart
from localcluster.start import start
from localcluster.stop import stop, watch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    # watch: the watchdog process start(owner_pid=...) runs, not for people
    parser.add_argument("action", choices=["up", "down", "status", "install-chart", "watch"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--namespace", default="pfo-system", help="install-chart: the operator's namespace")
    parser.add_argument("--release", default="pfo", help="install-chart: the Helm release")
    parser.add_argument("--no-real-node", action="store_true", help="up: without the real kubelet node")
    parser.add_argument("--owner-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--owner-start", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.action == "watch":
        watch(state_dir, args.owner_pid, args.owner_start)
        return 0
    if args.action == "down":
        stop(state_dir)
        print(f"stopped the cluster in {state_dir} and removed its state")
        return 0
    running = attach(state_dir)
    if running is not None and not running.healthy():
        running = None
    if args.action == "status":
        print(f"{state_dir}: {'running' if running else 'not running'}")
        return 0 if running else 1
    if args.action == "install-chart":
        if running is None:
            print(f"no running cluster in {state_dir}: run `make cluster-up` first", file=sys.stderr)
            return 1
        operator = install_chart(running, args.namespace, release=args.release)
        print(f"{args.namespace}/{operator.pod()['metadata']['name']}")
        return 0
    if running is not None:
        print(f"a cluster already runs from {state_dir}", file=sys.stderr)
        print(running.kubeconfig)
        return 0
    cluster = start(state_dir, real_node=not args.no_real_node)
    print(f"cluster ready in {cluster.state['start_seconds']}s; API server {cluster.server}", file=sys.stderr)
    print(f"  export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
