"""What a runner pod's containers get: environment variables and volume folders, read with the
node's identity (ConfigMaps, Secrets and ServiceAccount tokens the pod references), the way a
kubelet resolves them."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

from localcluster.kube_rest import KubeError, KubeRest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SetupError(Exception):
    """The pod cannot be started as written (kubelet: CreateContainerConfigError)."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args ($$ escapes; unknown refs stay)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def field_value(pod: dict[str, Any], path: str) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return pod["metadata"].get(m.group(1), {}).get(m.group(2), "")
    simple = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"]["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path not in simple:
        raise SetupError(f"fieldRef {path!r} is not supported by the local runner")
    return simple[path]


class PodContext:
    """Reads what a pod references (ConfigMaps, Secrets, tokens) with the node's identity."""

    def __init__(self, api: KubeRest, pod: dict[str, Any]) -> None:
        self.api = api
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]

    def data_of(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        """The decoded data of ConfigMap or Secret `name` (`kind` "configmap" or "secret"); None if
        it is missing and `optional`."""
        try:
            obj = self.api.get(f"/api/v1/namespaces/{self.ns}/{kind}s/{name}")
        except KubeError as exc:
            if exc.status == 404 and optional:
                return None
            raise SetupError(f"{kind} {self.ns}/{name}: {exc}") from exc
        data = dict(obj.get("data") or {})
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        data.update({k: base64.b64decode(v).decode() for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def key_ref(self, kind: str, ref: dict[str, Any]) -> str | None:
        data = self.data_of(kind, ref["name"], ref.get("optional", False))
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise SetupError(f"{kind} {self.ns}/{ref['name']} has no key {ref['key']!r}")
        return data[ref["key"]]

    def env(self, container: dict[str, Any], service_env: dict[str, str]) -> dict[str, str]:
        env = {"HOSTNAME": self.pod["metadata"]["name"], **service_env}
        for src in container.get("envFrom") or []:
            for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
                if key in src:
                    data = self.data_of(kind, src[key]["name"], src[key].get("optional", False)) or {}
                    env.update({src.get("prefix", "") + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                value: str | None = field_value(self.pod, vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf:
                value = self.key_ref("configmap", vf["configMapKeyRef"])
            elif "secretKeyRef" in vf:
                value = self.key_ref("secret", vf["secretKeyRef"])
            else:
                raise SetupError(f"env {var['name']}: {sorted(vf)} is not supported by the local runner")
            if value is not None:
                env[var["name"]] = value
        env["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}:{env.get('PATH', DEFAULT_PATH)}"
        return env

    def token(self, sa: str, audience: str | None, seconds: int) -> str:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod["metadata"]["name"],
                    "uid": self.pod["metadata"]["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token"
        try:
            return self.api.create(path, body)["status"]["token"]
        except KubeError as exc:
            raise SetupError(f"ServiceAccount token for {sa}: {exc}") from exc


def _write_items(folder: Path, data: dict[str, str], items: list[dict[str, Any]] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, rel in pairs:
        if key not in data:
            raise SetupError(f"volume file {rel!r}: key {key!r} not found")
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[key])
        target.chmod(0o644)


def volume_sources(ctx: PodContext, pod_dir: Path, volumes_root: Path) -> dict[str, tuple[Path, bool]]:
    """Each pod volume's local folder and whether it is read-only by nature."""
    out: dict[str, tuple[Path, bool]] = {}
    fs_group = (ctx.pod["spec"].get("securityContext") or {}).get("fsGroup")
    for vol in ctx.pod["spec"].get("volumes") or []:
        name, local = vol["name"], pod_dir / "volumes" / vol["name"]
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]
            folder = volumes_root / claim["claimName"]
            folder.mkdir(parents=True, exist_ok=True)
            if fs_group is not None:  # what kubelet does for volumes that support ownership management
                subprocess.run(["chgrp", "-R", str(fs_group), str(folder)], check=True)
                subprocess.run(["chmod", "-R", "g+rwX", str(folder)], check=True)
            out[name] = (folder, bool(claim.get("readOnly")))
        elif "emptyDir" in vol:
            local.mkdir(parents=True, exist_ok=True)
            local.chmod(0o777)  # kubelet creates emptyDir world-writable
            out[name] = (local, False)
        elif "hostPath" in vol:
            out[name] = (Path(vol["hostPath"]["path"]), False)
        elif "configMap" in vol or "secret" in vol:
            kind, key = ("configmap", "configMap") if "configMap" in vol else ("secret", "secret")
            src = vol[key]
            ref_name = src.get("name") or src.get("secretName")
            data = ctx.data_of(kind, ref_name, src.get("optional", False)) or {}
            _write_items(local, data, src.get("items"))
            out[name] = (local, True)
        elif "downwardAPI" in vol:
            items = vol["downwardAPI"].get("items") or []
            data = {
                i["path"]: field_value(ctx.pod, i["fieldRef"]["fieldPath"]) for i in items if "fieldRef" in i
            }
            _write_items(local, data, None)
            out[name] = (local, True)
        elif "projected" in vol:
            data: dict[str, str] = {}
            for source in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    t = source["serviceAccountToken"]
                    sa = ctx.pod["spec"].get("serviceAccountName") or "default"
                    data[t["path"]] = ctx.token(sa, t.get("audience"), int(t.get("expirationSeconds", 3607)))
                elif "configMap" in source or "secret" in source:
                    kind, key = ("configmap", "configMap") if "configMap" in source else ("secret", "secret")
                    s = source[key]
                    obj = ctx.data_of(kind, s["name"], s.get("optional", False)) or {}
                    pairs = [(i["key"], i["path"]) for i in s.get("items") or []] or [(k, k) for k in obj]
                    data.update({rel: obj[k] for k, rel in pairs if k in obj})
                elif "downwardAPI" in source:
                    for i in source["downwardAPI"].get("items") or []:
                        if "fieldRef" in i:
                            data[i["path"]] = field_value(ctx.pod, i["fieldRef"]["fieldPath"])
            _write_items(local, data, None)
            out[name] = (local, True)
        else:
            kinds = sorted(set(vol) - {"name"})
            raise SetupError(f"volume {name!r}: {kinds} is not supported by the local runner")
    return out
