"""deploy/Dockerfile: hadolint clean, and consistent with what it copies and what uses it (the
Makefile's build, the workspace, the chart's commands, the runtime's libraries). No container
engine exists here, so the image is not built; the binary it copies is the one the other
tests run."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

import harness
from conftest import tool

DOCKERFILE = harness.REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = harness.REPO / "deploy" / "Dockerfile.dockerignore"
# Shared libraries of gcr.io/distroless/cc-debian12 (glibc, libgcc_s, libstdc++) and the
# kernel's vDSO: anything else the binary links would be missing at run time.
DISTROLESS_CC = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libstdc++.so.6",
                 "ld-linux-x86-64.so.2", "libpthread.so.0", "libdl.so.2", "librt.so.1"}


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_hadolint_clean():
    proc = subprocess.run([tool("hadolint"), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_catches_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nRUN apt-get install curl\nUSER root\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3015" in proc.stdout and "DL3002" in proc.stdout, proc.stdout


def test_multi_stage_non_root_with_labels():
    builder, runtime = stages()
    assert builder[0][1].startswith("rust:") and " AS builder" in builder[0][1]
    assert runtime[0][1].startswith("gcr.io/distroless/cc-debian12:nonroot")
    user = [v for k, v in runtime if k == "USER"]
    assert user == ["65532:65532"]
    assert ("ENTRYPOINT", '["/usr/local/bin/keelson"]') in runtime
    exposed = " ".join(v for k, v in runtime if k == "EXPOSE").split()
    assert exposed == ["2379", "2380", "2381"]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', " ".join(v for k, v in runtime if k == "LABEL")))
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}" in labels, key
    license_ = tomllib.loads((harness.REPO / "Cargo.toml").read_text())["workspace"]["package"]["license"]
    assert labels["org.opencontainers.image.licenses"] == license_


def test_builds_what_the_makefile_builds():
    """The image's binary comes from the same cargo command as `make build` (release profile)."""
    make_build = re.search(r"^build:.*\n\t\$\(CARGO\) (build [^\n]+)", (harness.REPO / "Makefile").read_text(), re.M)
    assert make_build, "Makefile has no build target"
    docker_build = re.search(r"cargo (build [^&]+?)\s+&&", DOCKERFILE.read_text().replace("\\\n", " "))
    assert docker_build
    assert docker_build.group(1).split() == make_build.group(1).split()[:1] + ["--locked", "--release"] + make_build.group(1).split()[2:], \
        (docker_build.group(1), make_build.group(1))


def test_context_has_the_workspace():
    members = tomllib.loads((harness.REPO / "Cargo.toml").read_text())["workspace"]["members"]
    copied = set()
    for k, v in instructions():
        if k == "COPY" and "--from" not in v:
            copied |= {src.rstrip("/") for src in v.split()[:-1]}
    for needed in ["Cargo.toml", "Cargo.lock", "proto", *members]:
        assert needed in copied, f"the Dockerfile does not COPY {needed}"
        assert f"!{needed}" in DOCKERIGNORE.read_text().replace("/\n", "\n"), f"{needed} is not in the build context"


def test_image_provides_what_the_chart_and_compose_run():
    text = DOCKERFILE.read_text()
    for path in ("/out/usr/local/bin/keelson", "/out/usr/local/bin/etcdctl", "/out/usr/local/bin/etcd"):
        assert path in text, f"the image lacks {path[4:]}"
    sts = harness.one(harness.manifests(harness.render({})), "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["command"] == ["/usr/local/bin/keelson"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532


@pytest.mark.parametrize("binary", ["keelson", "etcdctl"])
def test_binary_needs_only_distroless_cc_libraries(binary, keelson_bin, etcdctl_bin):
    path = keelson_bin if binary == "keelson" else etcdctl_bin
    proc = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30)
    libs = {line.split()[0].split("/")[-1] for line in proc.stdout.splitlines() if line.strip()}
    if "statically" in proc.stdout + proc.stderr:
        return
    assert libs and libs <= DISTROLESS_CC, f"{binary} links libraries the runtime image lacks: {sorted(libs - DISTROLESS_CC)}"


def test_make_image_fails_clearly_without_a_container_engine():
    proc = subprocess.run(["make", "-s", "-C", str(harness.REPO), "image", "CONTAINER_ENGINE="],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "no container engine" in proc.stderr, proc.stderr
    proc = subprocess.run(["make", "-s", "-C", str(harness.REPO), "image", "CONTAINER_ENGINE=/bin/false"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "cannot reach" in proc.stderr, proc.stderr
