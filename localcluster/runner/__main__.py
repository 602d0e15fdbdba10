"""`python -m localcluster.runner`: the runner node, as the cluster starts it."""

from __future__ import annotations

import argparse
import logging
import signal

from localcluster.runner.node import Runner


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m localcluster.runner",
        description="the local process runner: a kubelet whose pods run as local processes",
    )
    p.add_argument("--kubeconfig", required=True, help="a kubeconfig with the node identity system:node:NODE")
    p.add_argument("--node", required=True)
    p.add_argument("--root", required=True, help="folder for volumes/ and pods/ (logs, termination files)")
    p.add_argument("--port", type=int, required=True, help="kubelet port (HTTPS logs endpoint)")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--client-ca", required=True)
    p.add_argument(
        "--gpus", type=int, default=0, help="nvidia.com/gpu capacity to advertise (processes use the CPU)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    runner = Runner(args)
    signal.signal(signal.SIGTERM, runner.shutdown)
    signal.signal(signal.SIGINT, runner.shutdown)
    runner.run()


if __name__ == "__main__":
    main()
