"""deploy/kubeadm, deploy/systemd and deploy/compose: validated statically (kubernetes-validate,
systemd-analyze verify and security, keelson's own flag table), and run for real where one
member suffices: the systemd environment file and kubeadm's static pod command (with a kubeadm
style PKI made by openssl) start keelson and answer their probes and etcdctl."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import harness
import pki
from conftest import tool

DEPLOY = harness.REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBEADM = DEPLOY / "kubeadm"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in out, f"{key} set twice in {path.name}"
            out[key] = value
    return out


def flag_of(variable: str) -> str:
    assert variable.startswith("ETCD_"), variable
    return variable[5:].lower().replace("_", "-")


def assert_supported(variables, where: str) -> None:
    known = harness.flags_in_source()
    for var in variables:
        flag = flag_of(var)
        assert flag in known, f"{where}: {var} names no keelson flag"
        assert known[flag] == "Supported", f"{where}: keelson does not implement --{flag} ({known[flag]})"


# ------------------------------------------------------------------------------------- systemd

def require_systemd_analyze() -> None:
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        pytest.fail("systemd-analyze is missing: scripts/install-deps.sh --test installs Debian's systemd")


def unit_copy(tmp_path: Path, binary: str) -> Path:
    """The unit with ExecStart and EnvironmentFile pointing at files that exist here (verify
    checks that the executable exists), plus the TLS drop-in."""
    unit_dir = tmp_path / "units"
    (unit_dir / "keelson.service.d").mkdir(parents=True)
    env = tmp_path / "keelson.env"
    shutil.copy(SYSTEMD / "keelson.env", env)
    text = (SYSTEMD / "keelson.service").read_text()
    assert "ExecStart=/usr/local/bin/keelson\n" in text and "EnvironmentFile=/etc/default/keelson\n" in text
    text = text.replace("ExecStart=/usr/local/bin/keelson", f"ExecStart={binary}")
    text = text.replace("EnvironmentFile=/etc/default/keelson", f"EnvironmentFile={env}")
    (unit_dir / "keelson.service").write_text(text)
    shutil.copy(SYSTEMD / "keelson-tls.conf", unit_dir / "keelson.service.d" / "tls.conf")
    return unit_dir


def test_systemd_unit_verifies(tmp_path):
    require_systemd_analyze()
    binary = harness.keelson_binary() or "/bin/true"
    unit_dir = unit_copy(tmp_path, binary)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_dir / "keelson.service")], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stdout + proc.stderr
    # It does catch mistakes (and reads the drop-in).
    with open(unit_dir / "keelson.service.d" / "tls.conf", "a") as f:
        f.write("LoadCredentail=x:/y\n")
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_dir / "keelson.service")], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}, timeout=60)
    assert "LoadCredentail" in proc.stderr


def test_systemd_unit_is_hardened():
    require_systemd_analyze()
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager",
                           str(SYSTEMD / "keelson.service")], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for keelson.service: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)} (systemd-analyze security):\n{proc.stdout}"


def test_systemd_environment_names_supported_flags():
    env = env_file(SYSTEMD / "keelson.env")
    assert_supported(env, "keelson.env")
    tls = re.findall(r"^Environment=(ETCD_[A-Z_]+)=", (SYSTEMD / "keelson-tls.conf").read_text(), re.M)
    assert len(tls) == 8
    assert_supported(tls, "keelson-tls.conf")
    assert not set(tls) & set(env), "the drop-in and the environment file would set one variable twice"


def test_systemd_environment_runs_keelson(tmp_path, keelson_bin, etcdctl_bin):
    """keelson started with exactly the environment file (ports moved to free ones, the data dir
    to a temporary one), as systemd would start it."""
    env = env_file(SYSTEMD / "keelson.env")
    ports = {p: harness.free_port("127.0.0.1") for p in ("2379", "2380", "2381")}
    mapped = {}
    for k, v in env.items():
        v = re.sub(r"127\.0\.0\.1:(2379|2380|2381)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", v)
        mapped[k] = v.replace("/var/lib/keelson", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    log = open(tmp_path / "keelson.log", "wb")
    proc = subprocess.Popen([keelson_bin], env={"PATH": "/usr/bin:/bin", **mapped}, cwd=tmp_path / "state",
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        metrics = f"http://127.0.0.1:{ports['2381']}"
        harness.wait_for("keelson's /readyz", lambda: harness.http_get(metrics + "/readyz")[0] == 200, 30,
                         lambda: "\n" + (tmp_path / "keelson.log").read_text(errors="replace")[-3000:])
        endpoints = f"http://127.0.0.1:{ports['2379']}"
        harness.etcdctl(endpoints, "put", "unit", "ok")
        members = harness.member_list(endpoints)
        assert [m["name"] for m in members] == [env["ETCD_NAME"]]
        assert (tmp_path / "state" / "data").is_dir()
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, f"keelson did not stop cleanly on SIGTERM (exit {code})"


# ------------------------------------------------------------------------------------- kubeadm

def deep_merge(base: dict, patch: dict) -> dict:
    """A strategic merge patch without lists, as the kubeadm patch is: maps merge, values replace."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_kubeadm_static_pod_validates_strictly(tmp_path):
    pod = yaml.safe_load((KUBEADM / "etcd.yaml").read_text())
    patched = deep_merge(pod, yaml.safe_load((KUBEADM / "patches" / "etcd+strategic.yaml").read_text()))
    (tmp_path / "patched.yaml").write_text(yaml.safe_dump(patched))
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", "1.37.0", str(KUBEADM / "etcd.yaml"),
                           str(tmp_path / "patched.yaml")], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("passed for resource pod/etcd") == 2, out


def test_kubeadm_static_pod_has_kubeadms_flags():
    pod = yaml.safe_load((KUBEADM / "etcd.yaml").read_text())
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "/usr/local/bin/keelson"
    flags = dict(a[2:].split("=", 1) for a in command[1:])
    known = harness.flags_in_source()
    kubeadm_flags = {"advertise-client-urls", "cert-file", "client-cert-auth", "data-dir", "initial-advertise-peer-urls",
                     "initial-cluster", "key-file", "listen-client-urls", "listen-metrics-urls", "listen-peer-urls", "name",
                     "peer-cert-file", "peer-client-cert-auth", "peer-key-file", "peer-trusted-ca-file", "snapshot-count",
                     "trusted-ca-file", "experimental-initial-corrupt-check", "experimental-watch-progress-notify-interval"}
    assert set(flags) == kubeadm_flags
    for f in flags:
        assert f in known and known[f] != "Refused", f
    probe = pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]
    assert f"http://{probe['host']}:{probe['port']}" == flags["listen-metrics-urls"]


def test_kubeadm_configurations():
    docs = list(yaml.safe_load_all((KUBEADM / "cluster-configuration.yaml").read_text()))
    cc = next(d for d in docs if d["kind"] == "ClusterConfiguration")
    assert cc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    external = cc["etcd"]["external"]
    assert all(re.fullmatch(r"https://[0-9.]+:2379", e) for e in external["endpoints"])
    assert len(external["endpoints"]) == 3
    assert {"caFile", "certFile", "keyFile"} <= set(external)
    docs = list(yaml.safe_load_all((KUBEADM / "kubeadm-local-etcd.yaml").read_text()))
    init = next(d for d in docs if d["kind"] == "InitConfiguration")
    cc = next(d for d in docs if d["kind"] == "ClusterConfiguration")
    assert init["patches"]["directory"] and cc["etcd"]["local"]["imageRepository"]
    patch = yaml.safe_load((KUBEADM / "patches" / "etcd+strategic.yaml").read_text())
    assert patch["spec"]["securityContext"]["runAsUser"] == 0
    assert "/out/usr/local/bin/etcd" in (DEPLOY / "Dockerfile").read_text(), "kubeadm runs `etcd` from the image"


def test_kubeadm_static_pod_runs_on_loopback(tmp_path, keelson_bin, etcdctl_bin):
    """kubeadm's etcd command line with keelson: mTLS clients, TLS peers, the metrics listener
    on 127.0.0.1, the PKI kubeadm would make (CA, server and peer certificates for the node's
    address and localhost, an apiserver-etcd-client certificate)."""
    pod = yaml.safe_load((KUBEADM / "etcd.yaml").read_text())
    pki_dir = tmp_path / "pki"
    cluster = harness.LoopbackCluster(pod, workdir=tmp_path, binaries={"keelson": keelson_bin},
                                      host_map={"10.0.0.1": 0}, host_paths={"/etc/kubernetes/pki/etcd": pki_dir})
    member = cluster.member(0)
    ca = pki.ca(pki_dir, "ca")
    pki.cert(pki_dir, "server", ca, ips=[member.address, member.loopback], dns=["localhost", "cp-1"])
    pki.cert(pki_dir, "peer", ca, ips=[member.address, member.loopback], dns=["localhost", "cp-1"])
    client = pki.cert(tmp_path / "client", "apiserver-etcd-client", ca, server=False)
    try:
        cluster.start(0)
        cluster.wait_probe(0, "startupProbe", 60)
        cluster.wait_probe(0, "readinessProbe", 30)
        assert cluster.probe(0, "livenessProbe")[0] == 200
        tls = [f"--cacert={ca[0]}", f"--cert={client[0]}", f"--key={client[1]}"]
        for address in (member.address, member.loopback):
            endpoints = f"https://{address}:{member.ports[2379]}"
            harness.etcdctl(endpoints, "put", "/registry/health", "ok", extra=tls)
        refused = harness.etcdctl(f"https://{member.address}:{member.ports[2379]}", "get", "x",
                                  extra=[f"--cacert={ca[0]}", "--dial-timeout=1s", "--command-timeout=2s"],
                                  check=False, timeout=30)
        assert refused.returncode != 0, "--client-cert-auth=true must refuse a client without a certificate"
        members = harness.member_list(f"https://{member.address}:{member.ports[2379]}", extra=tls)
        assert members[0]["name"] == "cp-1"
        assert members[0]["peerURLs"] == [f"https://{member.address}:{member.ports[2380]}"]
    finally:
        cluster.close()


# ------------------------------------------------------------------------------------- compose

def test_compose_three_member_cluster_is_consistent():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert sorted(services) == ["keelson-0", "keelson-1", "keelson-2"]
    clusters = set()
    published = []
    for name, svc in services.items():
        env = svc["environment"]
        assert_supported(env, f"compose service {name}")
        assert env["ETCD_NAME"] == name == svc["hostname"]
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{name}:2379"
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{name}:2380"
        clusters.add(env["ETCD_INITIAL_CLUSTER"])
        assert svc["user"] == "65532:65532" and svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert svc["healthcheck"]["test"][1] == "/usr/local/bin/etcdctl"
        assert svc["volumes"][0].endswith(":/var/lib/keelson")
        assert env["ETCD_DATA_DIR"].startswith("/var/lib/keelson/")
        published += [p.split(":", 1)[1] for p in svc.get("ports", [])]
    assert clusters == {",".join(f"keelson-{i}=http://keelson-{i}:2380" for i in range(3))}
    assert len(published) == len(set(published)), "two services publish one host port"
    assert "${KEELSON_IMAGE:-keelson:dev}" == services["keelson-0"]["image"]
    assert re.search(r"^IMAGE \?= keelson:dev$", (harness.REPO / "Makefile").read_text(), re.M)
