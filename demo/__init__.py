"""`make demo`: the project's main path on one machine (see demo/README.md).

Not part of the installed packages: it drives the local control plane from tests/cluster.
"""
