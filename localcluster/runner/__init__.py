"""The local process runner: a test-side kubelet for one Node whose pods run as local processes.

It registers its Node (tainted pfo.dev/local-runner=true:NoSchedule, labelled pfo.dev/local-runner:
"true"), keeps it Ready with a Lease and status heartbeats, watches the pods bound to it and runs
each container's command and args as a local process with the pod's environment:

* volumes: a PersistentVolumeClaim X is the folder <root>/volumes/X; an emptyDir a fresh per-pod
  folder; configMap, secret, downwardAPI and projected (ServiceAccount token) volumes are written to
  per-pod folders; hostPath is the path itself. Each container runs in a private mount namespace
  where these folders are bind-mounted at the pod's mountPaths (readOnly honoured), and a per-pod
  file is bind-mounted over its terminationMessagePath.
* command[0] is resolved on a PATH starting with the repository's .venv/bin.
* status: Running once started, then Succeeded/Failed with the real exit code, reason
  (Completed/Error/StartError/DeadlineExceeded) and the termination file's contents
  (FallbackToLogsOnError: the log's last 80 lines, at most 2 KiB, when the file is empty and the
  container failed).
* logs: stdout and stderr go to <root>/pods/<ns>_<pod>_<uid>/<container>.log, served on the kubelet
  port (HTTPS, /containerLogs/...) so `kubectl logs` and read_namespaced_pod_log work through the
  API server.
* deletion: SIGTERM to the container's process group, SIGKILL after the grace period, then the
  pod object is removed (as a kubelet does).

The node is node.py, one pod's life pod_worker.py, environment and volumes pod_inputs.py, the log
endpoint kubelet_logs.py, and each container is started by podexec.py inside its mount namespace.

Started by the cluster; by hand: python -m localcluster.runner --kubeconfig K --node N --root DIR ...
"""

RUNNER_NODE = "local-runner"
RUNNER_LABEL = "pfo.dev/local-runner"  # the node's label and taint: only pods that ask land there
