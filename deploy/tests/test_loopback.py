"""The chart's rendered StatefulSet run for real: each member's exact command line and
environment (Kubernetes' env and $(VAR) semantics), its probes and the `helm test` pod's
etcdctl command, with the keelson binary and Debian's etcdctl, on loopback through the
test-only resolver override of harness.LoopbackCluster (docs/deploy.md, "Testing the chart").

One member runs end to end today. Three and five members, scaling and member replacement wait
for keelson's clusters and join step: they skip with the reason keelson itself gives, and run
unchanged once it accepts them.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from pathlib import Path

import pytest

import harness
import pki
from harness import LoopbackCluster, manifests, one, render

FULL = "demo-keelson"


def cluster_for(values: dict, tmp_path, keelson_bin: str, etcdctl_bin: str, chart=harness.CHART,
                secret_dirs: dict | None = None) -> tuple[LoopbackCluster, list[dict]]:
    objs = manifests(render(values, chart=chart))
    sts = one(objs, "StatefulSet")
    cluster = LoopbackCluster(sts, workdir=tmp_path, binaries={"keelson": keelson_bin, "etcdctl": etcdctl_bin},
                              service_names=[FULL], secret_dirs=secret_dirs)
    return cluster, objs


class FakeKubeAPI:
    """The one Kubernetes API call `keelson leave --if-scaled-down` makes: GET of its
    StatefulSet, answering the replicas a test sets; HTTPS with a service account CA and token
    in `directory`, as the kubelet mounts them."""

    def __init__(self, directory: Path, namespace: str, name: str):
        self.replicas = 0
        self.requests: list[str] = []
        self.dir = directory
        ca = pki.ca(directory / "pki", "kube-ca")
        crt, key = pki.cert(directory / "pki", "apiserver", ca, ips=["127.0.0.1"], client=False)
        sa = directory / "serviceaccount"
        sa.mkdir(parents=True)
        (sa / "ca.crt").write_bytes(ca[0].read_bytes())
        (sa / "token").write_text("test-token")
        (sa / "namespace").write_text(namespace)
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                api.requests.append(self.path)
                ok = (self.path == f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"
                      and self.headers.get("Authorization") == "Bearer test-token")
                body = json.dumps({"kind": "StatefulSet", "metadata": {"name": name, "namespace": namespace},
                                   "spec": {"replicas": api.replicas}} if ok else {"kind": "Status", "code": 404}).encode()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def env(self) -> dict[str, str]:
        """What the kubelet sets in every container."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.server.server_address[1])}

    @property
    def service_account(self) -> Path:
        return self.dir / "serviceaccount"

    def close(self) -> None:
        self.server.shutdown()


def start_ready(cluster: LoopbackCluster, ordinals, timeout: float = 60) -> None:
    for i in ordinals:
        cluster.start(i)
    for i in ordinals:
        cluster.wait_probe(i, "startupProbe", timeout)
        cluster.wait_probe(i, "readinessProbe", timeout)
        status, body = cluster.probe(i, "livenessProbe")
        assert status == 200 and body.strip() == "ok", (status, body)


def require_clusters(keelson_bin: str, tmp_path) -> None:
    refusal = harness.multi_member_refusal(keelson_bin, tmp_path)
    if refusal:
        pytest.skip(f"keelson refuses clusters of several members today: {refusal!r}")


def require_join(keelson_bin: str, tmp_path) -> None:
    require_clusters(keelson_bin, tmp_path)
    if "--join-seeds" not in harness.keelson_help(keelson_bin):
        pytest.skip("keelson has no join step yet (`keelson --help` lists no --join-seeds; docs/deploy.md, "
                    "\"Scaling and member replacement\", says what the chart expects)")


def test_kubernetes_expansion_rules():
    env = {"POD_NAME": "kv-1", "A": "x"}
    assert harness.expand("--name=$(POD_NAME)", env) == "--name=kv-1"
    assert harness.expand("$$(POD_NAME) $(NOPE) $$", env) == "$(POD_NAME) $(NOPE) $"
    container = {"env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "URL", "value": "http://$(POD_NAME).svc:2379"},
                         {"name": "LATE", "value": "$(LATER)"}, {"name": "LATER", "value": "y"}]}
    env = harness.resolve_env(container, harness.PodIdentity("kv-1", "db", "127.0.0.5"))
    assert env == {"POD_NAME": "kv-1", "URL": "http://kv-1.svc:2379", "LATE": "$(LATER)", "LATER": "y"}


def test_harness_maps_a_rendered_member_to_loopback(tmp_path):
    """The override changes hosts, ports and mount paths only."""
    objs = manifests(render({"replicaCount": 3}))
    sts = one(objs, "StatefulSet")
    cluster = LoopbackCluster(sts, workdir=tmp_path, binaries={"keelson": "/opt/keelson", "etcdctl": "/opt/etcdctl"},
                              service_names=[FULL])
    argv, env = cluster.resolved(1)
    rendered = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert argv[0] == "/opt/keelson" and len(argv) == len(rendered) + 1
    flags = dict(a[2:].split("=", 1) for a in argv[1:])
    m = [cluster.member(i) for i in range(3)]
    assert flags["name"] == f"{FULL}-1"
    assert flags["initial-cluster"] == ",".join(f"{FULL}-{i}=http://{m[i].address}:{m[i].ports[2380]}" for i in range(3))
    assert flags["listen-client-urls"] == f"http://{m[1].address}:{m[1].ports[2379]}"
    assert flags["advertise-client-urls"] == flags["listen-client-urls"]
    assert flags["data-dir"] == str(tmp_path / "member-1" / "volumes" / "data" / "data")
    unchanged = [a for a, r in zip(argv[1:], rendered) if "://" not in r and "/var/lib" not in r and "$(" not in r]
    assert unchanged == [r for r in rendered if "://" not in r and "/var/lib" not in r and "$(" not in r]
    assert len({x.address for x in m}) == 3 and all(x.address.startswith("127.") for x in m)
    test_argv, _ = cluster.resolved_pod(one(objs, "Pod"))
    assert f"--endpoints={cluster.client_endpoints()}" in test_argv


def test_one_member_runs_as_rendered(tmp_path, keelson_bin, etcdctl_bin):
    cluster, objs = cluster_for({"replicaCount": 1}, tmp_path, keelson_bin, etcdctl_bin)
    try:
        t0 = time.monotonic()
        start_ready(cluster, [0])
        ready_after = time.monotonic() - t0
        member = cluster.member(0)
        endpoints = cluster.client_endpoints()
        harness.etcdctl(endpoints, "put", "greeting", "hello")
        assert harness.etcdctl(endpoints, "get", "greeting", "--print-value-only").stdout.strip() == "hello"
        members = harness.member_list(endpoints)
        assert len(members) == 1
        assert members[0]["name"] == f"{FULL}-0", "--name=$(POD_NAME) must expand to the pod's name"
        assert members[0]["peerURLs"] == [f"http://{member.address}:{member.ports[2380]}"]
        assert members[0]["clientURLs"] == [f"http://{member.address}:{member.ports[2379]}"]
        # The data dir is the rendered one, inside the volume.
        assert (member.workdir / "volumes" / "data" / "data").is_dir()
        # `helm test`: the rendered test pod's etcdctl command.
        proc = cluster.run_pod(one(objs, "Pod"))
        assert proc.returncode == 0 and "is healthy" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        member_id = members[0]["ID"]
        # A pod restart (SIGTERM within the grace period, same volume) keeps data and identity.
        assert cluster.stop(0) == 0, member.log_tail()
        start_ready(cluster, [0])
        assert harness.etcdctl(endpoints, "get", "greeting", "--print-value-only").stdout.strip() == "hello"
        assert harness.member_list(endpoints)[0]["ID"] == member_id
        print(f"\none member: ready {ready_after:.1f} s after start")
    finally:
        cluster.close()


def test_tls_auto_member_runs_as_rendered(tmp_path, keelson_bin, etcdctl_bin):
    """--auto-tls and --peer-auto-tls as the chart renders them, probed on plain HTTP, and the
    helm test pod with --insecure-skip-tls-verify."""
    values = {"replicaCount": 1, "tls": {"client": {"enabled": True, "source": "auto", "clientCertAuth": False},
                                         "peer": {"enabled": True, "source": "auto", "clientCertAuth": False}}}
    cluster, objs = cluster_for(values, tmp_path, keelson_bin, etcdctl_bin)
    try:
        start_ready(cluster, [0])
        endpoints = cluster.client_endpoints(scheme="https")
        harness.etcdctl(endpoints, "put", "k", "v", extra=["--insecure-transport=false", "--insecure-skip-tls-verify"])
        proc = cluster.run_pod(one(objs, "Pod"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        cluster.close()


@pytest.mark.parametrize("replicas", [3, 5])
def test_members_bootstrap_as_rendered(replicas, tmp_path, keelson_bin, etcdctl_bin):
    """A new cluster as the StatefulSet starts it (Parallel): every ordinal at once with the
    rendered --initial-cluster of headless DNS names."""
    require_clusters(keelson_bin, tmp_path)
    cluster, objs = cluster_for({"replicaCount": replicas}, tmp_path, keelson_bin, etcdctl_bin)
    try:
        t0 = time.monotonic()
        start_ready(cluster, range(replicas))
        print(f"\n{replicas} members: all ready {time.monotonic() - t0:.1f} s after start")
        endpoints = cluster.client_endpoints()
        members = harness.member_list(endpoints)
        assert sorted(m["name"] for m in members) == [f"{FULL}-{i}" for i in range(replicas)]
        assert not any(m.get("isLearner") for m in members)
        harness.etcdctl(cluster.client_endpoints([0]), "put", "k", "v")
        for i in range(replicas):
            got = harness.etcdctl(cluster.client_endpoints([i]), "get", "k", "--print-value-only")
            assert got.stdout.strip() == "v", f"member {i}"
        proc = cluster.run_pod(one(objs, "Pod"))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and out.count("is healthy") == replicas, out
        # A member restarted with its volume rejoins as itself.
        old_ids = {m["name"]: m["ID"] for m in members}
        assert cluster.stop(replicas - 1) == 0
        start_ready(cluster, [replicas - 1])
        assert {m["name"]: m["ID"] for m in harness.member_list(endpoints)} == old_ids
    finally:
        cluster.close()


def test_tls_from_secrets_as_rendered(tmp_path, keelson_bin, etcdctl_bin):
    """Client mTLS and peer TLS from Secrets (cert-manager's layout: tls.crt, tls.key, ca.crt),
    three members when keelson runs clusters, else one; the helm test pod with the client Secret."""
    replicas = 1 if harness.multi_member_refusal(keelson_bin, tmp_path) else 3
    secrets = {name: tmp_path / "secrets" / name for name in ("kv-server", "kv-peer", "kv-client")}
    values = {"replicaCount": replicas, "tls": {
        "client": {"enabled": True, "source": "secret", "secretName": "kv-server", "clientSecretName": "kv-client"},
        "peer": {"enabled": True, "source": "secret", "secretName": "kv-peer"}}}
    cluster, objs = cluster_for(values, tmp_path, keelson_bin, etcdctl_bin, secret_dirs=secrets)
    members = [cluster.member(i) for i in range(replicas)]
    ips = [m.address for m in members] + [m.loopback for m in members]
    ca = pki.ca(tmp_path / "pki", "etcd-ca")
    for name, server, client in (("kv-server", True, True), ("kv-peer", True, True), ("kv-client", False, True)):
        crt, key = pki.cert(tmp_path / "pki", name, ca, ips=ips if server else [], server=server, client=client)
        secrets[name].mkdir(parents=True)
        (secrets[name] / "tls.crt").write_bytes(crt.read_bytes())
        (secrets[name] / "tls.key").write_bytes(key.read_bytes())
        (secrets[name] / "ca.crt").write_bytes(ca[0].read_bytes())
    try:
        start_ready(cluster, range(replicas))
        endpoints = cluster.client_endpoints(scheme="https")
        client = [f"--cacert={ca[0]}", f"--cert={secrets['kv-client'] / 'tls.crt'}", f"--key={secrets['kv-client'] / 'tls.key'}"]
        harness.etcdctl(endpoints, "put", "k", "v", extra=client)
        assert [m["peerURLs"][0].split(":")[0] for m in harness.member_list(endpoints, extra=client)] == ["https"] * replicas
        anonymous = harness.etcdctl(endpoints, "get", "k", extra=[f"--cacert={ca[0]}", "--dial-timeout=1s", "--command-timeout=2s"], check=False)
        assert anonymous.returncode != 0, "--client-cert-auth must refuse a client without a certificate"
        proc = cluster.run_pod(one(objs, "Pod"))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and out.count("is healthy") == replicas, out
    finally:
        cluster.close()


def test_scale_3_to_5_and_back_then_replace_a_member(tmp_path, keelson_bin, etcdctl_bin):
    """As Kubernetes would do it: `helm upgrade --set replicaCount=5` re-renders the StatefulSet
    and starts ordinals 3 and 4 (empty volumes, the join step makes them learners and promotes
    them); `--set replicaCount=3` stops 4 then 3 after their preStop hook (`keelson leave`) ran;
    a member restarted with an empty volume is removed and re-added under its name."""
    require_join(keelson_bin, tmp_path)
    chart = harness.join_chart(tmp_path)
    api = FakeKubeAPI(tmp_path / "kube", "db", FULL)
    sa = {harness.SERVICE_ACCOUNT_DIR: api.service_account}
    timings = {}
    three, _ = cluster_for({"replicaCount": 3}, tmp_path, keelson_bin, etcdctl_bin, chart=chart, secret_dirs=sa)
    five = None
    try:
        api.replicas = 3
        start_ready(three, range(3))
        endpoints = three.client_endpoints()
        for i in range(50):
            harness.etcdctl(endpoints, "put", f"key{i}", f"value{i}")

        def names(eps: str) -> list[str]:
            return sorted(m["name"] for m in harness.member_list(eps) if m.get("name"))

        def voters(eps: str) -> int:
            return sum(1 for m in harness.member_list(eps) if not m.get("isLearner"))

        # A rollout restart of member 0 runs its preStop hook too: replicas still include it,
        # so it must stay a member.
        hook = three.container()["lifecycle"]["preStop"]["exec"]["command"]
        proc = three.run_exec(0, hook, extra_env=api.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(harness.member_list(endpoints)) == 3, "a restart must not remove the member"
        assert api.requests, "keelson leave did not ask the Kubernetes API for the replicas"

        # Scale up: a render with 5 replicas; members 0-2 keep running (their pods change only
        # in --initial-cluster/--join-seeds, which a member with data ignores).
        api.replicas = 5
        five, _ = cluster_for({"replicaCount": 5}, tmp_path, keelson_bin, etcdctl_bin, chart=chart, secret_dirs=sa)
        for i in range(3):
            five.members[i] = three.member(i)
        t0 = time.monotonic()
        start_ready(five, [3, 4], timeout=120)
        harness.wait_for("5 voting members", lambda: voters(endpoints) == 5, 120)
        timings["scale up 3 -> 5"] = time.monotonic() - t0
        assert names(endpoints) == [f"{FULL}-{i}" for i in range(5)]
        assert harness.etcdctl(five.client_endpoints([4]), "get", "key42", "--print-value-only").stdout.strip() == "value42"

        # Scale down: the StatefulSet stops the highest ordinal first, running its preStop hook
        # before SIGTERM, and waits for it to be gone before the next.
        api.replicas = 3
        t0 = time.monotonic()
        for i in (4, 3):
            proc = five.run_exec(i, five.container()["lifecycle"]["preStop"]["exec"]["command"], extra_env=api.env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            five.stop(i)
        harness.wait_for("3 members", lambda: len(harness.member_list(endpoints)) == 3, 60)
        timings["scale down 5 -> 3"] = time.monotonic() - t0
        assert names(endpoints) == [f"{FULL}-{i}" for i in range(3)]

        # Lost disk: member 1 comes back with an empty volume.
        t0 = time.monotonic()
        old_id = next(m["ID"] for m in harness.member_list(endpoints) if m["name"] == f"{FULL}-1")
        three.stop(1)
        three.wipe(1)
        start_ready(three, [1], timeout=120)
        harness.wait_for("3 voting members", lambda: voters(endpoints) == 3, 120)
        new_id = next(m["ID"] for m in harness.member_list(endpoints) if m["name"] == f"{FULL}-1")
        assert new_id != old_id, "a member whose disk was lost must come back as a new member"
        assert harness.etcdctl(three.client_endpoints([1]), "get", "key7", "--print-value-only").stdout.strip() == "value7"
        timings["replace member with empty volume"] = time.monotonic() - t0
        print("\n" + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    finally:
        three.close()
        if five is not None:
            five.close()
        api.close()


def test_auth_enabled_cluster_as_rendered(tmp_path, keelson_bin, etcdctl_bin):
    """auth.rbac.create with the root password in an existing Secret: three members as rendered,
    the bootstrap Job's command (twice: it is a hook of every install and upgrade), then an
    anonymous put is refused, root writes, and the helm test pod logs in as root. A restarted
    member keeps auth on."""
    require_clusters(keelson_bin, tmp_path)
    secrets = {"etcd-root": tmp_path / "secrets" / "etcd-root"}
    secrets["etcd-root"].mkdir(parents=True)
    (secrets["etcd-root"] / "root-password").write_text("s3cret-pw")
    values = {"replicaCount": 3, "auth": {"rbac": {"create": True, "existingSecret": "etcd-root"}}}
    cluster, objs = cluster_for(values, tmp_path, keelson_bin, etcdctl_bin, secret_dirs=secrets)
    job = next(o for o in objs if o["kind"] == "Job")
    try:
        start_ready(cluster, range(3))
        endpoints = cluster.client_endpoints()
        for run in ("install", "upgrade"):
            proc = cluster.run_pod(job, timeout=120)
            assert proc.returncode == 0, f"{run}: {proc.stdout}{proc.stderr}"
        assert "root logs in" in proc.stdout + proc.stderr, "the second run must only check the password"
        anonymous = harness.etcdctl(endpoints, "put", "k", "v", check=False)
        assert anonymous.returncode != 0 and "user name is empty" in anonymous.stderr, anonymous.stderr
        wrong = harness.etcdctl(endpoints, "put", "k", "v", extra=["--user=root:nope"], check=False)
        assert wrong.returncode != 0 and "authentication failed, invalid user ID or password" in wrong.stderr
        for i in range(3):
            harness.etcdctl(cluster.client_endpoints([i]), "put", f"k{i}", "v", extra=["--user=root:s3cret-pw"])
        alice = harness.etcdctl(endpoints, "user", "add", "alice:pw", extra=["--user=root:s3cret-pw"])
        assert "User alice created" in alice.stdout
        denied = harness.etcdctl(endpoints, "put", "k", "v", extra=["--user=alice:pw"], check=False)
        assert "etcdserver: permission denied" in denied.stderr, denied.stderr
        proc = cluster.run_pod(one(objs, "Pod"))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and out.count("is healthy") == 3, out
        # A member restarted with its volume: auth still on there, root still logs in.
        assert cluster.stop(2) == 0
        start_ready(cluster, [2])
        m2 = cluster.client_endpoints([2])
        assert harness.etcdctl(m2, "get", "k0", check=False).returncode != 0
        got = harness.etcdctl(m2, "get", "k0", "--print-value-only", extra=["--user=root:s3cret-pw"])
        assert got.stdout.strip() == "v"
        # A Secret whose password the cluster does not know makes the Job fail, loudly.
        (secrets["etcd-root"] / "root-password").write_text("other")
        proc = cluster.run_pod(job, timeout=120)
        assert proc.returncode != 0 and "root cannot log in" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    finally:
        cluster.close()
