"""How pods on the real node reach the API server: the `kubernetes` Service, as kube-proxy would.

Every pod gets `KUBERNETES_SERVICE_HOST=10.0.0.1` and `KUBERNETES_SERVICE_PORT=443` from the
kubelet (the `kubernetes` Service's ClusterIP), and in-cluster clients (the operator's kopf and
kubernetes client) connect there with the pod's ServiceAccount token. On a real cluster
kube-proxy translates that ClusterIP to the API server's address. There is no kube-proxy here
(it would take over the host's iptables for every Service of every cluster), so the node
installs the one translation pods need, in an nftables table of its own:

* the pods' route to the service range goes to the host over the node's bridge (host-local
  IPAM `routes`, written into the CNI configuration);
* `prerouting`: TCP to 10.0.0.1:443 arriving on the node's bridge is DNATed to the API server's
  127.0.0.1:<port>, which needs `route_localnet` on that bridge (a per-interface sysctl that goes
  with the bridge);
* `input`: anything else from the bridge to 127.0.0.0/8 is dropped (kube-proxy's guard for the
  same setting, CVE-2020-8558), so pods reach no other loopback service of the host.

The API server keeps listening on 127.0.0.1 only; its certificate names 10.0.0.1 and
kubernetes.default.svc. The table is named after the node (`pfo-<id>`), so nodes of several
clusters coexist, and teardown deletes it whole.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

SERVICE_CIDR = "10.0.0.0/24"  # kube-apiserver --service-cluster-ip-range
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the first address of that range
SERVICE_PORT = 443


class ServiceRouteError(RuntimeError):
    pass


def table_name(ident: str) -> str:
    return f"pfo-{ident}"


def ruleset(ident: str, bridge: str, apiserver_port: int) -> str:
    """The node's nftables table (nft syntax)."""
    return f"""table ip {table_name(ident)} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{bridge}" ip daddr {SERVICE_IP} tcp dport {SERVICE_PORT} dnat to 127.0.0.1:{apiserver_port}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{bridge}" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop
  }}
}}
"""


def _nft(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ServiceRouteError(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def install(ident: str, bridge: str, apiserver_port: int) -> None:
    """Route pods' traffic for the `kubernetes` Service to the API server (see the module's doc)."""
    ipaddress.ip_address(SERVICE_IP)  # a constant, but it goes into a ruleset: check it is one
    remove(ident)  # left by a node whose directory was reused
    Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").write_text("1\n")
    _nft("-f", "-", stdin=ruleset(ident, bridge, apiserver_port))


def installed(ident: str) -> bool:
    return _nft("list", "table", "ip", table_name(ident), check=False).returncode == 0


def remove(ident: str) -> bool:
    """Delete the node's table; True if there was one."""
    if not installed(ident):
        return False
    _nft("delete", "table", "ip", table_name(ident))
    return True
