"""`make demo`: the project's main path on one machine (see demo/README.md).

Not part of the installed packages: it drives the local cluster (localcluster/), and holds the
demo's data helpers (digits.py) and the trainer run alone, without a cluster (trainer_alone.py).
"""
