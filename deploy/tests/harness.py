"""Shared code of the deploy tests: rendering the chart with Helm's own engine, and running the
exact member commands of a rendered Pod/StatefulSet on loopback.

Rendering: helm-python-sdk binds Helm's Go SDK (libhelm_c), so templates, values coalescing,
the schema check and lint are Helm's own code, offline.

Running rendered pods on loopback (the test-only resolver override)
-------------------------------------------------------------------
A pod spec names hosts and ports as a cluster sees them: member i of StatefulSet S is
`S-i.<headless>.<ns>.svc.<domain>`, listens on 0.0.0.0 (or the pod IP) and uses the ports of the
chart (2379/2380/2381) on every member. On one machine those collide, so `LoopbackCluster` gives
member i its own loopback addresses (inside 127.0.0.0/8) and its own free ports,
and rewrites every URL and host in the member's resolved command line, environment and probes:

  - `S-i.<headless>...` (any suffix of the FQDN), the pod IP, `0.0.0.0` and `[::]` in member
    i's own spec -> member i's address 127.77.0.<i+1> (77 varies per cluster);
  - `127.0.0.1` and `localhost` in member i's own spec -> member i's own loopback,
    127.77.1.<i+1> (so that a pod listening on both 127.0.0.1 and its IP, as kubeadm's etcd
    does, gets two distinct sockets);
  - a port p in a URL of member j -> member j's free port for p;
  - the client Service's name -> every member's client URL (etcdctl takes a list);
  - extra hosts (`host_map`, e.g. a kubeadm node IP) -> the given member's address.

Nothing else changes: the binary, flag names, values, order, environment and paths are the
rendered ones; volume mount paths are mapped to temporary directories by prefix. Kubernetes'
own semantics are applied as the kubelet does: env from fieldRef (metadata.name,
metadata.namespace, status.podIP), `$(VAR)` expansion in env values, command and args (`$$`
escapes), and the container's command then args.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "keelson"
TOOLS_DIR = Path(os.environ.get("KEELSON_TOOLS_DIR", Path.home() / ".cache" / "keelson" / "tools"))
ETCDCTL = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")
PROMTOOL = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")


# ---------------------------------------------------------------------------------------------
# Helm
# ---------------------------------------------------------------------------------------------

def helm():
    import helm_python  # the venv of scripts/install-deploy-tools.sh

    return helm_python


def render(values: dict | None = None, *, name: str = "demo", namespace: str = "db",
           chart: Path = CHART, validate: bool = True) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` (install) renders them. With
    `validate`, the values are first checked against values.schema.json as `helm install` does."""
    h = helm()
    with h.Chart.load(str(chart)) as c:
        if validate:
            c.validate_schema(values or {})
        return c.render(values=values or {}, name=name, namespace=namespace, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt excluded), in template order."""
    out = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                out.append(doc)
    return out


def by_kind(objs: Iterable[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: Iterable[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Processes and HTTP
# ---------------------------------------------------------------------------------------------

def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts`."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError(f"no port free on all of {hosts}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, check: Callable[[], Any], timeout: float, describe: Callable[[], str] = lambda: "") -> Any:
    """Polls `check` until it returns a truthy value; fails after `timeout` seconds with `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 (reported below)
            last_error = e
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last error: {last_error!r}){describe()}")


# ---------------------------------------------------------------------------------------------
# Kubernetes pod semantics
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, undefined references stay
    as written, `$$` is a literal `$`."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


@dataclass
class PodIdentity:
    name: str
    namespace: str
    ip: str
    node: str = "node-a"


def resolve_env(container: dict, pod: PodIdentity, secret_dirs: dict[str, Path] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it (env in order; envFrom unsupported
    here: the tests render none). A secretKeyRef reads the key's file in the Secret's local
    directory."""
    assert not container.get("envFrom"), "envFrom is not emulated by the loopback harness"
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert secret_dirs and ref["name"] in secret_dirs, f"secret {ref['name']} has no local directory"
            env[var["name"]] = (secret_dirs[ref["name"]] / ref["key"]).read_text()
            continue
        field_ref = source.get("fieldRef", {}).get("fieldPath")
        value = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "status.podIP": pod.ip,
            "spec.nodeName": pod.node,
        }.get(field_ref)
        assert value is not None, f"env {var['name']}: {source} is not emulated"
        env[var["name"]] = value
    return env


def command_line(container: dict, env: dict[str, str]) -> list[str]:
    argv = list(container.get("command", [])) + list(container.get("args", []))
    assert argv, "the container has neither command nor args (the image's entrypoint would run)"
    return [expand(str(a), env) for a in argv]


# ---------------------------------------------------------------------------------------------
# The loopback cluster
# ---------------------------------------------------------------------------------------------

# Where the kubelet mounts the service account token when automountServiceAccountToken is on;
# give LoopbackCluster a directory for it in secret_dirs under this key.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_URL = re.compile(r"(?P<scheme>https?|unix)://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?")
_LOOPBACK_SUBNETS = iter(range(77, 250))


@dataclass
class Member:
    ordinal: int
    pod: PodIdentity
    address: str  # stands for the pod IP, the member's DNS names and 0.0.0.0
    loopback: str  # stands for the pod's own 127.0.0.1
    ports: dict[int, int]  # rendered port -> loopback port (the same on both addresses)
    workdir: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class LoopbackCluster:
    """Runs the members of one rendered workload (StatefulSet or Pod) on loopback."""

    def __init__(self, workload: dict, *, workdir: Path, binaries: dict[str, str],
                 cluster_domain: str = "cluster.local", service_names: Iterable[str] = (),
                 host_map: dict[str, int] | None = None, secret_dirs: dict[str, Path] | None = None,
                 host_paths: dict[str, Path] | None = None):
        self.workload = workload
        self.kind = workload["kind"]
        self.name = workload["metadata"]["name"]
        self.namespace = workload["metadata"].get("namespace", "default")
        self.pod_spec = workload["spec"]["template"]["spec"] if self.kind == "StatefulSet" else workload["spec"]
        self.service = workload["spec"].get("serviceName", "") if self.kind == "StatefulSet" else ""
        self.domain = cluster_domain
        self.workdir = workdir
        self.binaries = binaries
        self.service_names = list(service_names)
        self.host_map = host_map or {}
        self.secret_dirs = secret_dirs or {}
        self.host_paths = host_paths or {}
        self.subnet = next(_LOOPBACK_SUBNETS)
        self.members: dict[int, Member] = {}

    # -- identities --------------------------------------------------------------------------

    def container(self, name: str | None = None) -> dict:
        containers = self.pod_spec["containers"]
        if name is None:
            return containers[0]
        return next(c for c in containers if c["name"] == name)

    def rendered_ports(self) -> list[int]:
        """Container ports, probe ports and every port in a URL of the spec (a hostNetwork pod,
        such as kubeadm's etcd, declares none)."""
        ports = set()
        for c in self.pod_spec["containers"]:
            for p in c.get("ports", []):
                ports.add(int(p["containerPort"]))
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(kind, {}).get("httpGet", {}).get("port")
                if isinstance(port, int):
                    ports.add(port)
            texts = list(c.get("command", [])) + list(c.get("args", [])) + [str(e.get("value", "")) for e in c.get("env", [])]
            for text in texts:
                ports |= {int(m.group("port")) for m in _URL.finditer(str(text)) if m.group("port")}
        return sorted(ports)

    def member(self, ordinal: int) -> Member:
        if ordinal not in self.members:
            address = f"127.{self.subnet}.0.{ordinal + 1}"
            loopback = f"127.{self.subnet}.1.{ordinal + 1}"
            pod_name = f"{self.name}-{ordinal}" if self.kind == "StatefulSet" else self.name
            ports = {p: free_port_on(address, loopback) for p in self.rendered_ports()}
            self.members[ordinal] = Member(
                ordinal=ordinal,
                pod=PodIdentity(pod_name, self.namespace, address),
                address=address,
                loopback=loopback,
                ports=ports,
                workdir=self.workdir / f"member-{ordinal}",
            )
        return self.members[ordinal]

    def names_of(self, ordinal: int) -> list[str]:
        """Every spelling of member `ordinal`'s DNS name, longest first."""
        if self.kind != "StatefulSet":
            return []
        pod = f"{self.name}-{ordinal}"
        parts = [pod, self.service, self.namespace, "svc", *self.domain.split(".")]
        return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]

    def host_owner(self, host: str, me: int) -> int | None:
        """Which member a host of member `me`'s spec designates (None: not a member; `me` < 0:
        a pod that is not a member, such as the helm test pod)."""
        if me >= 0 and host in ("0.0.0.0", "[::]", "localhost", "127.0.0.1", self.member(me).pod.ip):
            return me
        if host in self.host_map:
            return self.host_map[host]
        for ordinal in range(self.replicas()):
            if host in self.names_of(ordinal):
                return ordinal
        return None

    def replicas(self) -> int:
        return int(self.workload["spec"].get("replicas", 1)) if self.kind == "StatefulSet" else 1

    # -- rewriting ---------------------------------------------------------------------------

    def rewrite_url(self, url: re.Match, me: int) -> str:
        scheme, host, port = url.group("scheme"), url.group("host"), url.group("port")
        for service in self.service_names:
            if host in self._service_spellings(service):
                port_n = int(port or 80)
                return ",".join(
                    f"{scheme}://{m.address}:{m.ports.get(port_n, port_n)}"
                    for m in (self.member(i) for i in range(self.replicas()))
                )
        owner = self.host_owner(host, me)
        if owner is None:
            raise AssertionError(f"member {me}: no loopback mapping for host {host!r} in {url.group(0)!r}")
        target = self.member(owner)
        new_port = target.ports.get(int(port), int(port)) if port else None
        return f"{scheme}://{self.address_for(host, owner)}" + (f":{new_port}" if new_port else "")

    def address_for(self, host: str, owner: int) -> str:
        member = self.member(owner)
        return member.loopback if host in ("127.0.0.1", "localhost") else member.address

    def _service_spellings(self, service: str) -> list[str]:
        parts = [service, self.namespace, "svc", *self.domain.split(".")]
        return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]

    def rewrite(self, text: str, me: int) -> str:
        text = _URL.sub(lambda m: self.rewrite_url(m, me), text)
        return self.map_paths(text, me)

    def mounts(self, me: int) -> list[tuple[str, Path]]:
        """(mount path, local directory) of member `me`'s container, longest path first."""
        member = self.member(me)
        volumes = {v["name"]: v for v in self.pod_spec.get("volumes", [])}
        out = []
        for mount in self.container().get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert secret in self.secret_dirs, f"secret {secret} has no local directory"
                local = self.secret_dirs[secret]
            elif "hostPath" in volume and volume["hostPath"]["path"] in self.host_paths:
                local = self.host_paths[volume["hostPath"]["path"]]
            else:  # PVC template, emptyDir, hostPath: a directory per member
                local = member.workdir / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
            out.append((mount["mountPath"].rstrip("/"), local))
        if self.pod_spec.get("automountServiceAccountToken") and SERVICE_ACCOUNT_DIR in self.secret_dirs:
            out.append((SERVICE_ACCOUNT_DIR, self.secret_dirs[SERVICE_ACCOUNT_DIR]))
        return sorted(out, key=lambda m: -len(m[0]))

    def map_paths(self, text: str, me: int) -> str:
        """Mount paths (longest first, one pass, so a replacement is never rewritten again)."""
        mounts = dict(self.mounts(me))
        if not mounts:
            return text
        pattern = "|".join(re.escape(p) for p in mounts)
        return re.sub(rf"(?<![\w/])({pattern})(?=/|$|,)", lambda m: str(mounts[m.group(1)]), text)

    def resolved(self, ordinal: int, container: str | None = None) -> tuple[list[str], dict[str, str]]:
        """Member `ordinal`'s exact command line and environment, mapped to loopback."""
        member = self.member(ordinal)
        spec = self.container(container)
        env = resolve_env(spec, member.pod)
        argv = command_line(spec, env)
        argv = [self.rewrite(a, ordinal) for a in argv]
        env = {k: self.rewrite(v, ordinal) for k, v in env.items()}
        binary = argv[0]
        name = os.path.basename(binary)
        assert name in self.binaries, f"no local binary for {binary}"
        return [self.binaries[name], *argv[1:]], env

    def resolved_pod(self, pod: dict) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of another rendered pod (e.g. the helm test pod, or
        a Job's pod) whose URLs name the members or the client Service, mapped to loopback."""
        spec = pod["spec"]["template"]["spec"] if pod["kind"] == "Job" else pod["spec"]
        container = spec["containers"][0]
        identity = PodIdentity(pod["metadata"]["name"], self.namespace, f"127.{self.subnet}.2.1")
        env = resolve_env(container, identity, self.secret_dirs)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.workdir / "pods" / pod["metadata"]["name"] / mount["name"]
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert secret in self.secret_dirs, f"secret {secret} has no local directory"
                if "items" in volume["secret"]:  # only the listed keys, under their paths
                    local.mkdir(parents=True, exist_ok=True)
                    for item in volume["secret"]["items"]:
                        shutil.copyfile(self.secret_dirs[secret] / item["key"], local / item["path"])
                else:
                    local = self.secret_dirs[secret]
            else:  # emptyDir
                local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/")] = local

        def rewrite(text: str) -> str:
            text = _URL.sub(lambda m: self.rewrite_url(m, -1), text)
            if not mounts:
                return text
            # Longest first, in one pass, so that a replacement is never rewritten again.
            pattern = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
            return re.sub(rf"(?<![\w/])({pattern})(?=/|$)", lambda m: str(mounts[m.group(1)]), text)

        argv = [rewrite(a) for a in command_line(container, env)]
        env = {k: rewrite(v) for k, v in env.items()}
        name = os.path.basename(argv[0])
        assert name in self.binaries, f"no local binary for {argv[0]}"
        return [self.binaries[name], *argv[1:]], env

    def run_exec(self, ordinal: int, argv: list[str], extra_env: dict[str, str] | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        """An exec in member `ordinal`'s container (a preStop hook): its environment, $(VAR)
        expansion, and the same loopback mapping."""
        member = self.member(ordinal)
        env = {k: self.rewrite(v, ordinal) for k, v in resolve_env(self.container(), member.pod).items()}
        argv = [self.rewrite(expand(a, env), ordinal) for a in argv]
        name = os.path.basename(argv[0])
        assert name in self.binaries, f"no local binary for {argv[0]}"
        return subprocess.run([self.binaries[name], *argv[1:]],
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def run_pod(self, pod: dict, timeout: float = 60) -> subprocess.CompletedProcess:
        argv, env = self.resolved_pod(pod)
        return subprocess.run(argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # -- running -----------------------------------------------------------------------------

    def start(self, ordinal: int, extra_env: dict[str, str] | None = None) -> Member:
        member = self.member(ordinal)
        member.workdir.mkdir(parents=True, exist_ok=True)
        argv, env = self.resolved(ordinal)
        member.argv, member.env = argv, env
        member.log_path = member.workdir / "keelson.log"
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        log = open(member.log_path, "ab")
        member.process = subprocess.Popen(
            argv, env={**base, **env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=member.workdir, start_new_session=True,
        )
        log.close()
        return member

    def probe(self, ordinal: int, kind: str) -> tuple[int, str]:
        """Runs the rendered probe (`readinessProbe`, `livenessProbe`, `startupProbe`) once."""
        member = self.member(ordinal)
        spec = self.container()
        probe = spec[kind]["httpGet"]
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in spec["ports"] if p["name"] == port)
        host = probe.get("host") or member.pod.ip
        owner = self.host_owner(host, ordinal)
        address = self.address_for(host, owner) if owner is not None else host
        scheme = probe.get("scheme", "HTTP").lower()
        url = f"{scheme}://{address}:{member.ports.get(int(port), int(port))}{probe['path']}"
        return http_get(url, timeout=float(spec[kind].get("timeoutSeconds", 1)))

    def wait_probe(self, ordinal: int, kind: str, timeout: float = 30) -> None:
        member = self.member(ordinal)

        def ok():
            assert member.process is not None
            code = member.process.poll()
            if code is not None:
                raise AssertionError(f"member {ordinal} exited with {code}:\n{member.log_tail()}")
            status, _ = self.probe(ordinal, kind)
            return status == 200

        wait_for(f"member {ordinal}'s {kind}", ok, timeout, lambda: f"\n--- log of member {ordinal}:\n{member.log_tail()}")

    def stop(self, ordinal: int, timeout: float | None = None) -> int:
        """SIGTERM, as the kubelet stops a container; waits for the grace period."""
        member = self.member(ordinal)
        assert member.process is not None
        grace = timeout or float(self.pod_spec.get("terminationGracePeriodSeconds", 30))
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
        try:
            return member.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()
            raise AssertionError(f"member {ordinal} did not stop within the grace period ({grace} s)")

    def wipe(self, ordinal: int) -> None:
        """A lost disk: the member's volumes are emptied."""
        shutil.rmtree(self.member(ordinal).workdir / "volumes", ignore_errors=True)

    def close(self) -> None:
        for m in self.members.values():
            if m.process and m.process.poll() is None:
                m.process.kill()
                m.process.wait()

    def client_endpoints(self, ordinals: Iterable[int] | None = None, scheme: str = "http", client_port: int = 2379) -> str:
        ordinals = range(self.replicas()) if ordinals is None else ordinals
        return ",".join(f"{scheme}://{self.member(i).address}:{self.member(i).ports[client_port]}" for i in ordinals)


def etcdctl(endpoints: str, *args: str, extra: Iterable[str] = (), timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run([ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=5s", "--command-timeout=10s", *extra, *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"etcdctl {' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
    return proc


def member_list(endpoints: str, extra: Iterable[str] = ()) -> list[dict]:
    out = etcdctl(endpoints, "member", "list", "-w", "json", extra=extra).stdout
    return json.loads(out).get("members", [])


# ---------------------------------------------------------------------------------------------
# keelson itself
# ---------------------------------------------------------------------------------------------

def keelson_binary() -> str | None:
    """KEELSON_BIN, else the cargo target dir's debug build (CARGO_TARGET_DIR or ./target)."""
    explicit = os.environ.get("KEELSON_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidate = target / "debug" / "keelson"
    return str(candidate) if candidate.exists() else None


def multi_member_refusal(binary: str, workdir: Path) -> str | None:
    """keelson's own refusal of a 3-member --initial-cluster (None once it accepts one). The
    probe cannot start a server: --initial-cluster-state=probe is invalid either way."""
    cluster = ",".join(f"m{i}=http://127.0.0.1:{9 + i}" for i in range(3))
    proc = subprocess.run([binary, "--name", "m0", "--data-dir", str(workdir / "probe.etcd"),
                           "--initial-advertise-peer-urls", "http://127.0.0.1:9", "--initial-cluster", cluster,
                           "--initial-cluster-state", "probe"], capture_output=True, text=True, timeout=20,
                          env={"PATH": "/usr/bin:/bin"})
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 and "not supported" in text and "member" in text:
        return text.splitlines()[0]
    return None


def join_chart(workdir: Path) -> Path:
    """The chart with keelson.joinSupported on (see _helpers.tpl): the chart itself, now that
    keelson has the join step; a copy with it switched on if it is ever switched off."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    if '{{- define "keelson.joinSupported" -}}true{{- end -}}' in helpers:
        return CHART
    chart = workdir / "keelson-join"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        path = chart / "templates" / "_helpers.tpl"
        text = path.read_text()
        marker = '{{- define "keelson.joinSupported" -}}\n{{- end -}}'
        assert marker in text, "keelson.joinSupported moved: update harness.join_chart"
        path.write_text(text.replace(marker, '{{- define "keelson.joinSupported" -}}true{{- end -}}'))
    return chart


def keelson_help(binary: str) -> str:
    return subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20).stdout


def flags_in_source() -> dict[str, str]:
    """Every flag of server/src/config/mod.rs -> Supported, Ignored or Refused."""
    text = (REPO / "server" / "src" / "config" / "mod.rs").read_text()
    flags = {}
    for m in re.finditer(r'flag\("([a-z0-9-]+)",\s*(?:Value|Bool),.*?,\s*(Supported|Ignored|Refused)\b', text):
        flags[m.group(1)] = m.group(2)
    assert len(flags) > 50, f"could not read the flag table of server/src/config/mod.rs ({len(flags)} found)"
    return flags


def metric_families_in_source() -> set[str]:
    """The metric names registered in server/src/metrics/ (plus the process collector's)."""
    names = set()
    for path in (REPO / "server" / "src" / "metrics").glob("*.rs"):
        names |= set(re.findall(r'"((?:etcd|grpc)_[a-z0-9_]+)"', path.read_text()))
    names |= {
        "process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_virtual_memory_bytes",
        "process_resident_memory_bytes", "process_start_time_seconds", "process_threads",
    }
    assert "etcd_server_has_leader" in names, "could not read server/src/metrics"
    return names
