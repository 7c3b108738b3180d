"""charts/keelson rendered by Helm's own engine (helm-python-sdk: Helm's Go SDK), for the default
values and each feature, then checked: concrete assertions on the manifests, the schema
refusing bad values, `helm lint --strict`, and `kubernetes-validate --strict` on every rendered
object for the oldest (kubeVersion) and the newest Kubernetes the chart supports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import harness
from conftest import tool
from harness import by_kind, manifests, one, render

HERE = Path(__file__).resolve().parent
FULL = "demo-keelson"
HEADLESS = "demo-keelson-headless"
DOMAIN = f"{HEADLESS}.db.svc.cluster.local"
# Oldest supported (Chart.yaml kubeVersion) and newest known to kubernetes-validate.
K8S_VERSIONS = ["1.29.0", "1.37.0"]

SCENARIOS: dict[str, dict] = {
    "default": {},
    "one-member": {"replicaCount": 1},
    "five-members": {"replicaCount": 5},
    "tls-secrets": {
        "tls": {
            "client": {"enabled": True, "source": "secret", "secretName": "kv-server", "clientSecretName": "kv-client"},
            "peer": {"enabled": True, "source": "secret", "secretName": "kv-peer"},
        }
    },
    "tls-cert-manager": {
        "tls": {
            "client": {"enabled": True, "source": "certManager"},
            "peer": {"enabled": True, "source": "certManager"},
            "certManager": {"issuerRef": {"name": "etcd-ca", "kind": "ClusterIssuer"}},
        }
    },
    "tls-auto": {
        "tls": {"client": {"enabled": True, "source": "auto", "clientCertAuth": False},
                "peer": {"enabled": True, "source": "auto", "clientCertAuth": False}}
    },
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                    "grafanaDashboard": {"enabled": True}}
    },
    "tuned": {
        "persistence": {"storageClass": "local-ssd", "size": "20Gi", "retentionPolicy": {"whenScaled": "Delete"}},
        "podAntiAffinityPreset": "hard", "zoneSpreadPreset": "hard",
        "config": {"quotaBackendBytes": 8589934592, "autoCompactionRetention": "30m", "logLevel": "warn"},
        "extraArgs": ["--experimental-initial-corrupt-check=true"],
        "extraEnv": [{"name": "ETCD_MAX_SNAPSHOTS", "value": "3"}],
        "priorityClassName": "system-cluster-critical",
        "image": {"repository": "registry.example.internal/keelson", "digest": "sha256:" + "a" * 64},
    },
    "no-persistence": {"persistence": {"enabled": False}, "replicaCount": 1, "podManagementPolicy": "OrderedReady"},
    "auth-simple": {"auth": {"rbac": {"create": True, "existingSecret": "etcd-root"}}},
    "auth-jwt-tls": {
        "auth": {"rbac": {"create": True, "rootPassword": "s3cret"}, "bcryptCost": 12,
                 "token": {"type": "jwt", "signMethod": "ES256", "ttl": "5m",
                           "privateKey": {"existingSecret": "etcd-jwt", "filename": "key.pem", "publicKeyFilename": "key.pub"}}},
        "tls": {"client": {"enabled": True, "source": "certManager"},
                "certManager": {"issuerRef": {"name": "etcd-ca", "kind": "ClusterIssuer"}}},
    },
}

TLS_FLAGS = {"--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth", "--auto-tls",
             "--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file", "--peer-client-cert-auth", "--peer-auto-tls"}


def rendered(name: str) -> list[dict]:
    return manifests(render(SCENARIOS[name]))


def member_container(objs: list[dict]) -> dict:
    sts = one(objs, "StatefulSet")
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "keelson")


def flags(container: dict) -> dict[str, str]:
    """--flag=value (or bare --flag -> "true") of the member's command line."""
    out = {}
    for arg in container["args"]:
        m = re.fullmatch(r"(--[a-z0-9-]+)(?:=(.*))?", arg)
        assert m, f"unexpected argument {arg!r}"
        assert m.group(1) not in out, f"{m.group(1)} given twice"
        out[m.group(1)] = "true" if m.group(2) is None else m.group(2)
    return out


def peer_url(i: int, scheme: str = "http") -> str:
    return f"{scheme}://{FULL}-{i}.{DOMAIN}:2380"


# ----------------------------------------------------------------------------- default values

def test_default_render_is_a_three_member_cluster():
    objs = rendered("default")
    kinds = sorted(o["kind"] for o in objs)
    # Role and RoleBinding: the preStop hook reads its StatefulSet's replicas (join step).
    assert kinds == ["Pod", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service",
                     "ServiceAccount", "StatefulSet"], kinds
    sts = one(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == HEADLESS
    f = flags(member_container(objs))
    assert f["--initial-cluster"] == ",".join(f"{FULL}-{i}={peer_url(i)}" for i in range(3))
    assert f["--name"] == "$(POD_NAME)"
    assert f["--initial-advertise-peer-urls"] == f"http://$(POD_NAME).{DOMAIN}:2380"
    assert f["--advertise-client-urls"] == f"http://$(POD_NAME).{DOMAIN}:2379"
    assert f["--listen-client-urls"] == "http://0.0.0.0:2379"
    assert f["--listen-peer-urls"] == "http://0.0.0.0:2380"
    assert f["--listen-metrics-urls"] == "http://0.0.0.0:2381"
    assert f["--initial-cluster-state"] == "new"
    assert f["--initial-cluster-token"] == FULL
    assert f["--data-dir"] == "/var/lib/keelson/data"
    assert not TLS_FLAGS & set(f), "TLS flags without TLS"
    env = {e["name"]: e for e in member_container(objs)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_every_member_flag_is_one_keelson_supports():
    known = harness.flags_in_source()
    for scenario in SCENARIOS:
        for flag in flags(member_container(rendered(scenario))):
            name = flag[2:]
            assert name in known, f"{scenario}: keelson has no flag {flag}"
            if scenario != "tuned":  # tuned passes an ignored etcd flag through extraArgs on purpose
                assert known[name] == "Supported", f"{scenario}: keelson does not implement {flag} ({known[name]})"


def test_services_headless_publishes_not_ready_members():
    objs = rendered("default")
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    headless, client = services[HEADLESS], services[FULL]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"client": 2379, "peer": 2380, "metrics": 2381}
    assert client["spec"].get("clusterIP") != "None"
    assert not client["spec"].get("publishNotReadyAddresses")
    assert [p["port"] for p in client["spec"]["ports"]] == [2379]
    pod_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for svc in (headless, client):
        assert svc["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("replicas,quorum", [(3, 2), (5, 3), (7, 4), (9, 5)])
def test_pdb_keeps_a_quorum(replicas, quorum):
    objs = manifests(render({"replicaCount": replicas}))
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == quorum
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_one_member_has_no_pdb_and_notes_warn():
    r = render({"replicaCount": 1})
    assert not by_kind(manifests(r), "PodDisruptionBudget"), "a PDB of 1 would block every drain"
    assert "one member tolerates no failure" in r["keelson/templates/NOTES.txt"]


def test_five_members_initial_cluster_lists_five_headless_names():
    f = flags(member_container(rendered("five-members")))
    members = f["--initial-cluster"].split(",")
    assert members == [f"{FULL}-{i}={peer_url(i)}" for i in range(5)]
    for m in members:
        name, url = m.split("=", 1)
        assert url.startswith(f"http://{name}.{HEADLESS}.db.svc.cluster.local:")


def test_security_context_is_hardened():
    objs = rendered("default")
    pod = one(objs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["fsGroup"] == 65532
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # The token is mounted only for the preStop hook's one `get` on its own StatefulSet (the
    # Role allows nothing else).
    assert pod["automountServiceAccountToken"] is True
    for container in pod["containers"] + one(objs, "Pod")["spec"]["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["runAsNonRoot"] is True
        assert "resources" in container and container["resources"]["limits"]["memory"]


def test_probes_use_livez_and_readyz_on_the_metrics_listener():
    c = member_container(rendered("default"))
    metrics_port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
    assert flags(c)["--listen-metrics-urls"].endswith(f":{metrics_port}")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics", "scheme": "HTTP"}
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"


def test_volumes_and_claims():
    objs = rendered("tuned")
    sts = one(objs, "StatefulSet")
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "local-ssd"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Delete"}
    mounts = {m["name"]: m["mountPath"] for m in member_container(objs)["volumeMounts"]}
    assert mounts["data"] == "/var/lib/keelson"
    assert flags(member_container(objs))["--data-dir"].startswith(mounts["data"] + "/")
    objs = rendered("no-persistence")
    sts = one(objs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]
    assert "persistence.enabled=false" in render(SCENARIOS["no-persistence"])["keelson/templates/NOTES.txt"]


def test_presets_and_extras():
    objs = rendered("tuned")
    pod = one(objs, "StatefulSet")["spec"]["template"]["spec"]
    required = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0]["topologyKey"] == "kubernetes.io/hostname"
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert pod["priorityClassName"] == "system-cluster-critical"
    c = member_container(objs)
    assert c["image"] == "registry.example.internal/keelson@sha256:" + "a" * 64
    f = flags(c)
    assert f["--experimental-initial-corrupt-check"] == "true"
    assert f["--quota-backend-bytes"] == "8589934592"
    assert f["--auto-compaction-retention"] == "30m"
    assert {"name": "ETCD_MAX_SNAPSHOTS", "value": "3"} in c["env"]
    default_pod = one(rendered("default"), "StatefulSet")["spec"]["template"]["spec"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in default_pod["affinity"]["podAntiAffinity"]
    assert "topologySpreadConstraints" not in default_pod
    none = one(manifests(render({"podAntiAffinityPreset": "none"})), "StatefulSet")["spec"]["template"]["spec"]
    assert "affinity" not in none


# ------------------------------------------------------------------------------------------ TLS

def test_tls_from_secrets():
    objs = rendered("tls-secrets")
    c = member_container(objs)
    f = flags(c)
    assert f["--cert-file"] == "/etc/keelson/tls/client/tls.crt"
    assert f["--key-file"] == "/etc/keelson/tls/client/tls.key"
    assert f["--trusted-ca-file"] == "/etc/keelson/tls/client/ca.crt"
    assert f["--client-cert-auth"] == "true"
    assert f["--peer-cert-file"] == "/etc/keelson/tls/peer/tls.crt"
    assert f["--peer-trusted-ca-file"] == "/etc/keelson/tls/peer/ca.crt"
    assert f["--peer-client-cert-auth"] == "true"
    assert "--auto-tls" not in f and "--peer-auto-tls" not in f
    assert f["--listen-client-urls"].startswith("https://") and f["--advertise-client-urls"].startswith("https://")
    assert f["--initial-cluster"] == ",".join(f"{FULL}-{i}={peer_url(i, 'https')}" for i in range(3))
    assert f["--listen-metrics-urls"].startswith("http://"), "probes and Prometheus read plain HTTP"
    volumes = {v["name"]: v for v in one(objs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["client-tls"]["secret"]["secretName"] == "kv-server"
    assert volumes["peer-tls"]["secret"]["secretName"] == "kv-peer"
    assert not by_kind(objs, "Certificate")
    test_pod = one(objs, "Pod")
    args = test_pod["spec"]["containers"][0]["args"]
    assert f"--endpoints=https://{FULL}.db.svc.cluster.local:2379" in args
    assert "--cert=/etc/keelson/etcdctl/tls.crt" in args
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == "kv-client"


def test_tls_from_cert_manager():
    objs = rendered("tls-cert-manager")
    certs = {c["metadata"]["name"]: c for c in by_kind(objs, "Certificate")}
    assert set(certs) == {f"{FULL}-server", f"{FULL}-client", f"{FULL}-peer"}
    for cert in certs.values():
        assert cert["spec"]["issuerRef"] == {"name": "etcd-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert f"*.{DOMAIN}" in certs[f"{FULL}-server"]["spec"]["dnsNames"]
    assert f"{FULL}.db.svc.cluster.local" in certs[f"{FULL}-server"]["spec"]["dnsNames"]
    assert certs[f"{FULL}-peer"]["spec"]["dnsNames"][-1] == f"*.{DOMAIN}"
    assert set(certs[f"{FULL}-peer"]["spec"]["usages"]) >= {"server auth", "client auth"}
    volumes = {v["name"]: v for v in one(objs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["client-tls"]["secret"]["secretName"] == certs[f"{FULL}-server"]["spec"]["secretName"]
    assert volumes["peer-tls"]["secret"]["secretName"] == certs[f"{FULL}-peer"]["spec"]["secretName"]
    test_pod = one(objs, "Pod")
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == certs[f"{FULL}-client"]["spec"]["secretName"]
    f = flags(member_container(objs))
    assert {"--cert-file", "--client-cert-auth", "--peer-cert-file", "--peer-client-cert-auth"} <= set(f)


def test_auto_tls():
    objs = rendered("tls-auto")
    f = flags(member_container(objs))
    assert TLS_FLAGS & set(f) == {"--auto-tls", "--peer-auto-tls"}
    assert f["--listen-client-urls"].startswith("https://") and f["--listen-peer-urls"].startswith("https://")
    args = one(objs, "Pod")["spec"]["containers"][0]["args"]
    assert "--insecure-skip-tls-verify" in args and "--insecure-transport=false" in args, \
        "etcdctl 3.4 speaks plaintext to https endpoints without --insecure-transport=false"
    assert not by_kind(objs, "Certificate")
    names = {v["name"] for v in one(objs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert not names & {"client-tls", "peer-tls"}


def test_tls_flags_follow_each_side_alone():
    client_only = flags(member_container(manifests(render({"tls": {"client": {"enabled": True, "secretName": "s", "clientSecretName": "c"}}}))))
    assert TLS_FLAGS & set(client_only) == {"--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth"}
    assert client_only["--listen-peer-urls"].startswith("http://")
    peer_only = flags(member_container(manifests(render({"tls": {"peer": {"enabled": True, "secretName": "p", "clientCertAuth": False}}}))))
    assert TLS_FLAGS & set(peer_only) == {"--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file"}
    assert peer_only["--listen-client-urls"].startswith("http://")


# ----------------------------------------------------------------------------------- monitoring

def test_monitoring_objects(promtool, tmp_path):
    objs = rendered("monitoring")
    headless = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"] == HEADLESS)
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    client = next(s for s in by_kind(objs, "Service") if s["metadata"]["name"] == FULL)
    assert not sm["spec"]["selector"]["matchLabels"].items() <= client["metadata"]["labels"].items(), \
        "the ServiceMonitor must scrape members through the headless Service only"
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in headless["spec"]["ports"]}
    job = next(r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job")
    assert re.fullmatch(".*etcd.*", job), "etcd's alerts select job=~'.*etcd.*'"
    pm = one(objs, "PodMonitor")
    pod_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    rule = one(objs, "PrometheusRule")
    shipped = []
    for name in ("keelson-alerts.yaml", "keelson-recording.yaml"):
        shipped += yaml.safe_load((harness.REPO / "deploy" / "prometheus" / name).read_text())["groups"]
    assert rule["spec"]["groups"] == shipped
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    dashboard = one(objs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped_dashboard = json.loads((harness.REPO / "deploy" / "prometheus" / "keelson-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["keelson.json"]) == shipped_dashboard


def test_monitoring_is_off_by_default():
    kinds = {o["kind"] for o in rendered("default")}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Certificate"}


def test_chart_files_equal_deploy_prometheus():
    """The chart ships copies (Helm cannot read outside the chart); `make chart-sync` refreshes them."""
    for name in ("keelson-alerts.yaml", "keelson-recording.yaml", "keelson-dashboard.json"):
        shipped = (harness.REPO / "deploy" / "prometheus" / name).read_bytes()
        copy = (harness.CHART / "files" / name).read_bytes()
        assert copy == shipped, f"charts/keelson/files/{name} differs from deploy/prometheus/{name}: run make chart-sync"


# ---------------------------------------------------------------------------------- helm test

def test_helm_test_pod_runs_endpoint_health_cluster():
    pod = one(rendered("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["etcdctl"]
    assert c["args"][-3:] == ["endpoint", "health", "--cluster"]
    assert f"--endpoints=http://{FULL}.db.svc.cluster.local:2379" in c["args"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_notes_show_the_etcdctl_command():
    notes = render({})["keelson/templates/NOTES.txt"]
    assert "etcdctl --endpoints http://127.0.0.1:2379 endpoint status --cluster -w table" in notes
    assert f"kubectl -n db port-forward svc/{FULL} 2379:2379" in notes
    notes = render(SCENARIOS["tls-cert-manager"])["keelson/templates/NOTES.txt"]
    assert "--cacert ca.crt --cert tls.crt --key tls.key endpoint status" in notes
    assert f"get secret {FULL}-client-tls" in notes


# ------------------------------------------------------------------------------------- auth

def auth_job(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == f"{FULL}-auth-bootstrap")


def test_auth_is_off_by_default_with_etcds_token_defaults():
    objs = rendered("default")
    assert not by_kind(objs, "Job") and not by_kind(objs, "Secret")
    f = flags(member_container(objs))
    assert (f["--auth-token"], f["--auth-token-ttl"], f["--bcrypt-cost"]) == ("simple", "300", "10")
    env = one(objs, "Pod")["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["ETCDCTL_API"]
    assert "--user" not in render({})["keelson/templates/NOTES.txt"]


def test_auth_simple_from_an_existing_secret():
    objs = rendered("auth-simple")
    assert not by_kind(objs, "Secret"), "an existing Secret is used, none is created"
    job = auth_job(objs)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["command"] == ["/usr/local/bin/keelson", "auth-bootstrap"]
    assert c["args"][0] == "--endpoints=" + ",".join(f"http://{FULL}-{i}.{DOMAIN}:2379" for i in range(3))
    assert "--root-password-file=/etc/keelson/auth/root/password" in c["args"]
    secret = next(v for v in spec["volumes"] if v["name"] == "root-password")["secret"]
    assert secret == {"secretName": "etcd-root", "items": [{"key": "root-password", "path": "password"}], "defaultMode": 0o440}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in one(objs, "Pod")["spec"]["containers"][0]["env"]}
    assert env["ETCDCTL_USER"]["value"] == "root"
    assert env["ETCDCTL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "etcd-root", "key": "root-password"}
    notes = render(SCENARIOS["auth-simple"])["keelson/templates/NOTES.txt"]
    assert "get secret etcd-root -o go-template='{{index .data \"root-password\" | base64decode}}'" in notes
    assert 'endpoint status --cluster -w table' in notes and '--user root:"$ROOT_PASSWORD" endpoint status' in notes
    assert f"{FULL}-auth-bootstrap" in notes


def test_auth_jwt_with_tls_and_a_chart_made_secret():
    objs = rendered("auth-jwt-tls")
    secret = one(objs, "Secret")
    assert secret["metadata"]["name"] == f"{FULL}-auth"
    assert secret["data"] == {"root-password": "czNjcmV0"}
    c = member_container(objs)
    f = flags(c)
    assert f["--auth-token"] == ("jwt,priv-key=/etc/keelson/auth/jwt/key.pem,pub-key=/etc/keelson/auth/jwt/key.pub,"
                                 "sign-method=ES256,ttl=5m")
    assert f["--bcrypt-cost"] == "12"
    assert {"name": "jwt-key", "mountPath": "/etc/keelson/auth/jwt", "readOnly": True} in c["volumeMounts"]
    sts = one(objs, "StatefulSet")
    assert {"name": "jwt-key", "secret": {"secretName": "etcd-jwt", "defaultMode": 0o440}} in sts["spec"]["template"]["spec"]["volumes"]
    jc = auth_job(objs)["spec"]["template"]["spec"]["containers"][0]
    assert jc["args"][0].startswith(f"--endpoints=https://{FULL}-0.{DOMAIN}:2379,")
    assert jc["args"][-3:] == ["--cacert=/etc/keelson/etcdctl/ca.crt", "--cert=/etc/keelson/etcdctl/tls.crt",
                               "--key=/etc/keelson/etcdctl/tls.key"]


# ------------------------------------------------------------------------- extra args and env

@pytest.mark.parametrize("values,message", [
    ({"extraArgs": ["--name=x"]}, "extraArgs: --name is set by the chart"),
    ({"extraArgs": ["-initial-cluster=a=http://a:2380"]}, "extraArgs: --initial-cluster is set by the chart"),
    ({"extraEnv": [{"name": "ETCD_DATA_DIR", "value": "/x"}]}, "extraEnv: ETCD_DATA_DIR repeats --data-dir"),
    ({"extraEnv": [{"name": "ETCD_LISTEN_METRICS_URLS", "value": "x"}]}, "ETCD_LISTEN_METRICS_URLS repeats --listen-metrics-urls"),
    ({"config": {"electionTimeout": 400}}, "at least 5 times config.heartbeatInterval"),
    ({"ports": {"metrics": 2379}}, "must differ"),
    ({"tls": {"client": {"enabled": True, "source": "certManager"}}}, "needs tls.certManager.issuerRef.name"),
    ({"tls": {"client": {"enabled": True, "secretName": "s"}}}, "set tls.client.clientSecretName"),
    ({"auth": {"rbac": {"create": True}}}, "auth.rbac.create needs auth.rbac.existingSecret"),
    ({"auth": {"rbac": {"create": True, "rootPassword": "x"}, "token": {"type": "jwt"}}},
     "auth.token.type=jwt needs auth.token.privateKey.existingSecret"),
    ({"extraArgs": ["--auth-token=jwt"]}, "extraArgs: --auth-token is set by the chart"),
])
def test_render_refuses_conflicting_values(values, message):
    with pytest.raises(Exception) as err:
        render(values)
    assert message in str(err.value)


# --------------------------------------------------------------------------------- bad values

BAD_VALUES = [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": 2}, "/replicaCount"),
    ({"replicaCount": 4}, "/replicaCount"),
    ({"replicaCount": 11}, "/replicaCount"),
    ({"replicaCount": "3"}, "/replicaCount"),
    ({"persistence": {"size": "8GB"}}, "/persistence/size"),
    ({"persistence": {"size": "-1Gi"}}, "/persistence/size"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"persistence": {"size": "0"}}, "/persistence/size"),
    ({"persistence": {"accessModes": []}}, "/persistence/accessModes"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "sha256:xyz"}}, "/image/digest"),
    ({"tls": {"client": {"source": "vault"}}}, "/tls/client/source"),
    ({"tls": {"client": {"enabled": True, "source": "secret"}}}, "/tls/client"),
    ({"tls": {"peer": {"enabled": True, "source": "auto", "clientCertAuth": True}}}, "/tls/peer"),
    ({"auth": {"enabled": True}}, "/auth"),
    ({"auth": {"token": {"type": "oauth"}}}, "/auth/token/type"),
    ({"auth": {"token": {"signMethod": "ES512"}}}, "/auth/token/signMethod"),
    ({"auth": {"bcryptCost": 3}}, "/auth/bcryptCost"),
    ({"auth": {"token": {"simpleTtl": 0}}}, "/auth/token/simpleTtl"),
    ({"replicas": 3}, "replicas"),
    ({"config": {"logLevel": "verbose"}}, "/config/logLevel"),
    ({"config": {"autoCompactionRetention": "1 hour"}}, "/config/autoCompactionRetention"),
    ({"config": {"electionTimeout": 60000}}, "/config/electionTimeout"),
    ({"extraArgs": ["name=x"]}, "/extraArgs/0"),
    ({"metrics": {"job": "keelson"}}, "/metrics/job"),
    ({"podManagementPolicy": "OrderedReady"}, "/replicaCount"),
    ({"resources": {"requests": {"cpu": "lots"}}}, "/resources/requests/cpu"),
    ({"ports": {"client": 70000}}, "/ports/client"),
    ({"listenAddress": "10.0.0.1"}, "/listenAddress"),
    ({"clusterDomain": "Cluster_Local"}, "/clusterDomain"),
    ({"cluster": {"initialState": "joining"}}, "/cluster/initialState"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(values, where):
    h = harness.helm()
    with pytest.raises(h.HelmValuesError) as err:
        render(values)
    assert where in str(err.value), str(err.value)


def test_schema_accepts_every_scenario_and_the_defaults():
    h = harness.helm()
    with h.Chart.load(str(harness.CHART)) as chart:
        for name, values in SCENARIOS.items():
            chart.validate_schema(values)


# ----------------------------------------------------------------------------------- helm lint

def test_helm_lint_strict():
    h = harness.helm()
    for name in ("default", "tls-cert-manager", "monitoring", "five-members"):
        report = h.lint(str(harness.CHART), values=SCENARIOS[name], strict=True, kube_version="v1.34.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2 or m["error"] != "icon is recommended"]
        assert not problems and not report["errors"], f"{name}: {report}"
    report = h.lint(str(harness.CHART), values={"replicaCount": 2}, strict=True)
    assert report["errors"], "lint must apply the schema"


# ------------------------------------------------------------------- kubernetes-validate --strict

CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate"}


def test_every_rendered_object_validates_strictly(tmp_path):
    files = []
    for scenario, values in SCENARIOS.items():
        for path, text in render(values).items():
            if path.endswith(".yaml") and text.strip():
                f = tmp_path / f"{scenario}--{path.replace('/', '_')}"
                f.write_text(text)
                files.append(f)
    files += [_join_chart_render(tmp_path)]
    for version in K8S_VERSIONS:
        proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files)],
                              capture_output=True, text=True, timeout=120)
        lines = (proc.stdout + proc.stderr).splitlines()
        unknown = [l for l in lines if l.startswith("WARN") and not any(f"kind {k} " in l for k in CRD_KINDS)]
        failed = [l for l in lines if l.startswith(("ERROR", "FAIL")) or "failed" in l]
        passed = [l for l in lines if l.startswith("INFO") and " passed " in l]
        assert proc.returncode == 0 and not failed and not unknown, f"Kubernetes {version}:\n" + "\n".join(lines)
        assert len(passed) >= 6 * len(SCENARIOS), f"Kubernetes {version}: too few objects validated:\n" + "\n".join(lines)


def test_custom_resources_match_their_crds():
    """kubernetes-validate has no schemas for CRDs: these are checked against subsets of
    prometheus-operator's (monitoring.coreos.com/v1) and cert-manager's (cert-manager.io/v1)
    OpenAPI schemas that name every field the chart uses (unknown fields are refused)."""
    schemas = json.loads((HERE / "crd-schemas.json").read_text())
    seen = set()
    for scenario in ("monitoring", "tls-cert-manager"):
        for obj in rendered(scenario):
            if obj["kind"] in CRD_KINDS:
                key = f"{obj['apiVersion']}/{obj['kind']}"
                jsonschema.validate(obj, schemas[key])
                seen.add(obj["kind"])
    assert seen == CRD_KINDS


# ------------------------------------------------------------------------ the prepared join step

def _join_chart_render(tmp_path: Path) -> Path:
    chart = harness.join_chart(tmp_path)
    out = tmp_path / "join--render.yaml"
    out.write_text("\n---\n".join(t for p, t in render({"replicaCount": 5}, chart=chart).items() if p.endswith(".yaml")))
    return out


def test_join_step_hooks_render_once_enabled(tmp_path):
    """The chart renders the join flag, the preStop leave hook (with the member's own flags, so
    that `keelson leave` knows which member it is) and its RBAC (docs/deploy.md)."""
    assert "--join-seeds" in json.dumps(rendered("default"))
    objs = [o for o in yaml.safe_load_all(_join_chart_render(tmp_path).read_text()) if o]
    sts = one(objs, "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    f = flags(c)
    assert f["--join-seeds"] == ",".join(peer_url(i) for i in range(5))
    hook = c["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:3] == ["/usr/local/bin/keelson", "leave", f"--if-scaled-down=statefulset/{FULL}"]
    assert hook[5:] == c["args"], "the hook names the member with the same flags it runs with"
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    role = one(objs, "Role")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": [FULL], "verbs": ["get"]}]
    assert one(objs, "RoleBinding")["subjects"][0]["name"] == FULL


# ------------------------------------------------------------------------------ values reference

def test_values_reference_is_generated_from_the_schema():
    sys.path.insert(0, str(harness.CHART))
    import gen_values_doc  # noqa: E402

    readme = (harness.CHART / "README.md").read_text()
    assert gen_values_doc.table() in readme, "charts/keelson/README.md is stale: run python3 charts/keelson/gen_values_doc.py"


def test_every_default_value_is_described_by_the_schema():
    schema = json.loads((harness.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((harness.CHART / "values.yaml").read_text())

    def walk(v, s, path):
        assert s.get("description"), f"{path or '/'}: no description in values.schema.json"
        if isinstance(v, dict) and "properties" in s:
            for k, sub in v.items():
                assert k in s["properties"], f"{path}/{k}: not in values.schema.json"
                walk(sub, s["properties"][k], f"{path}/{k}")

    walk(values, {**schema, "description": "root"}, "")
