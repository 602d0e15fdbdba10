"""The one error the local cluster's tools raise (a subclass says more where a caller may care)."""


class ClusterError(RuntimeError):
    """Something about the local cluster or a process beside it failed; the message says what and
    where to look (a log file, a command's stderr)."""
