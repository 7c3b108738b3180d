"""Test certificates made with the openssl CLI: X.509 v3 with key usages and extended key
usages (rustls, keelson's TLS, refuses v1 certificates), ECDSA P-256."""

from __future__ import annotations

import subprocess
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr}"


def ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _run("req", "-x509", "-new", "-key", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=directory)
    return crt, key


def cert(directory: Path, name: str, ca_pair: tuple[Path, Path], *, ips: list[str] = (), dns: list[str] = (),
         server: bool = True, client: bool = True) -> tuple[Path, Path]:
    """`name`.crt and `name`.key in `directory`, signed by `ca_pair`."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={','.join(usages)}"]
    if sans:
        lines.append(f"subjectAltName={','.join(sans)}")
    ext.write_text("\n".join(lines) + "\n")
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _run("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca_pair[0]), "-CAkey", str(ca_pair[1]), "-CAcreateserial",
         "-out", str(crt), "-days", "2", "-extfile", str(ext), cwd=directory)
    return crt, key
