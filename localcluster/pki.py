"""Certificates and keys for the local control plane, made with the `openssl` command line tool.

One CA signs every serving and client certificate; identities are client certificates (the
common name is the user, the organisations are the groups), exactly as a kubeadm cluster does.
EC P-256 keys keep generation fast on a small machine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed in {cwd}: {proc.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(path),
        cwd=path.parent,
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class PKI:
    """A CA in `directory` and helpers to issue certificates from it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertPair(self.dir / "ca.crt", self.dir / "ca.key")
        if not self.ca.cert.exists():
            _ec_key(self.ca.key)
            _openssl(
                "req", "-x509", "-new", "-key", str(self.ca.key), "-days", "3650",
                "-subj", "/CN=pfo-local-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-out", str(self.ca.cert),
                cwd=self.dir,
            )  # fmt: skip

    def issue(
        self,
        name: str,
        common_name: str,
        groups: tuple[str, ...] = (),
        *,
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
    ) -> CertPair:
        """A certificate `name`.crt for `common_name` (client use; server use too when SANs are given)."""
        pair = CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if pair.cert.exists():
            return pair
        _ec_key(pair.key)
        subject = "".join(f"/O={g}" for g in groups) + f"/CN={common_name}"
        csr = self.dir / f"{name}.csr"
        _openssl("req", "-new", "-key", str(pair.key), "-subj", subject, "-out", str(csr), cwd=self.dir)
        usages = "clientAuth,serverAuth" if (server_names or server_ips) else "clientAuth"
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        ext.append(f"extendedKeyUsage={usages}")
        sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        extfile = self.dir / f"{name}.ext"
        extfile.write_text("\n".join(ext) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca.cert), "-CAkey", str(self.ca.key),
            "-CAcreateserial", "-days", "3650", "-extfile", str(extfile), "-out", str(pair.cert),
            cwd=self.dir,
        )  # fmt: skip
        csr.unlink()
        extfile.unlink()
        return pair

    def service_account_keys(self) -> CertPair:
        """The key pair the API server signs ServiceAccount tokens with (cert = the public key)."""
        pair = CertPair(self.dir / "sa.pub", self.dir / "sa.key")
        if not pair.key.exists():
            _ec_key(pair.key)
            _openssl("pkey", "-in", str(pair.key), "-pubout", "-out", str(pair.cert), cwd=self.dir)
        return pair
