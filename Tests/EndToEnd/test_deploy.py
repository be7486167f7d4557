"""deploy/: the manifests validate (kubernetes-validate for the core kinds, `waypoint check` for the routes and
policies), the plain rendering matches the kustomize base, the Dockerfile ships exactly the libraries the binary
links, and the Deployment's flags are ones the binary accepts."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BINARY, ROOT

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def base_documents():
    order = [line.strip()[2:] for line in (BASE / "kustomization.yaml").read_text().splitlines() if line.strip().startswith("- ")]
    return [(name, yaml.safe_load((BASE / name).read_text())) for name in order]


@pytest.mark.parametrize("name, doc", [(n, d) for n, d in base_documents() if d["kind"] in CORE_KINDS])
def test_core_manifests_validate_strictly(name, doc, tmp_path):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(["kubernetes-validate", "--strict", "--kubernetes-version", "1.30.0", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_configmap_routes_and_policies_pass_waypoint_check(tmp_path):
    for name, doc in base_documents():
        if doc["kind"] == "ConfigMap":
            for key, text in doc["data"].items():
                (tmp_path / key).write_text(text)
    # The Gateway is part of the config the waypoint reads too (policies may target it).
    (tmp_path / "gateway.yaml").write_text((BASE / "gateway.yaml").read_text())
    out = subprocess.run([str(BINARY), "check", "--config", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "1 gateways" in out.stdout and "1 authorization policies" in out.stdout


def test_plain_rendering_matches_the_base():
    rendered = [d for d in yaml.safe_load_all((DEPLOY / "waypoint.yaml").read_text()) if d]
    assert rendered == [doc for _, doc in base_documents()]


def test_deployment_matches_istio_waypoint_shape():
    docs = {doc["kind"]: doc for _, doc in base_documents()}
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    container = pod["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {15008, 15020, 15021}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert "livenessProbe" not in container
    assert pod["spec"]["securityContext"]["runAsUser"] == 1337 and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    drain = next(a for a in container["args"] if a.startswith("--drain-timeout="))
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(drain.split("=")[1].rstrip("s"))
    service = docs["Service"]
    assert service["metadata"]["annotations"]["networking.istio.io/traffic-distribution"] == "PreferClose"
    assert {"name": "mesh", "port": 15008, "targetPort": 15008, "appProtocol": "hbone"} in service["spec"]["ports"]
    gateway = docs["Gateway"]
    assert gateway["spec"]["gatewayClassName"] == "istio-waypoint"
    assert gateway["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]


def test_deployment_flags_are_accepted_by_the_binary(tmp_path):
    """The container's arguments, run against local stand-ins for the mounted files: the proxy starts."""
    docs = {doc["kind"]: doc for _, doc in base_documents()}
    args = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    import pki
    certs = pki.make(str(tmp_path))
    config = tmp_path / "config"
    config.mkdir()
    (config / "gateway.yaml").write_text((BASE / "gateway.yaml").read_text())
    local = {"/etc/waypoint/config": str(config), "/var/run/secrets/waypoint/tls.crt": certs["waypoint"][0],
             "/var/run/secrets/waypoint/tls.key": certs["waypoint"][1], "/var/run/secrets/waypoint/ca.crt": certs["ca"]}
    replaced = []
    for a in args:
        for k, v in local.items():
            a = a.replace(k, v)
        a = re.sub(r"(0\.0\.0\.0|127\.0\.0\.1):\d+", "127.0.0.1:0", a)
        replaced.append(a)
    proc = subprocess.Popen([str(BINARY), *replaced], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "ready" in line, line
    finally:
        proc.kill()
        proc.wait()


def test_dockerfile_runtime_packages_match_ldd():
    runtime = (DEPLOY / "Dockerfile").read_text().split("FROM debian:bookworm-slim", 1)[1]
    install = re.search(r"apt-get install -y --no-install-recommends ([^\\&\n]+)", runtime).group(1).split()
    libraries = re.findall(r"=> (/\S+)", subprocess.run(["ldd", str(BINARY)], capture_output=True, text=True).stdout)
    needed = set()
    for lib in libraries:
        owner = subprocess.run(["dpkg", "-S", Path(lib).resolve()], capture_output=True, text=True).stdout.split(":")[0]
        if owner and owner not in {"libc6", "libgcc-s1"}:   # in every Debian base image
            needed.add(owner)
    assert needed == set(install), (needed, install)


def test_dockerfile_build_context_holds_the_whole_package(tmp_path):
    # No container engine runs here: copy exactly what the build stage COPYs and let SwiftPM check that every
    # target's folder is there (a target added to Package.swift but not to the Dockerfile broke the image once).
    build = (DEPLOY / "Dockerfile").read_text().split("FROM debian:bookworm-slim", 1)[0]
    copies = re.findall(r"^COPY (\S+) (\S+)$", build, re.MULTILINE)
    assert copies, build
    for source, destination in copies:
        target = tmp_path / (Path(source).name if destination == "./" else destination)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    described = subprocess.run(["swift", "package", "describe", "--type", "json"], cwd=tmp_path, capture_output=True, text=True)
    assert described.returncode == 0, described.stderr


def test_kubernetes_overlay_grants_exactly_the_reads_the_watchers_make(tmp_path):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "overlays" / "kubernetes" / "rbac.yaml").read_text()) if d]
    for i, doc in enumerate(docs):
        path = tmp_path / f"rbac-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        out = subprocess.run(["kubernetes-validate", "--strict", "--kubernetes-version", "1.30.0", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    granted = {(group, resource) for doc in docs if doc["kind"] == "Role" and "namespace" not in doc["metadata"]
               for rule in doc["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
               if rule["verbs"] == ["get", "list", "watch"]}
    # what the binary watches (Sources/Kubernetes/Watch.swift: WatchedKind.all), as the fake API server maps them
    from fake_apiserver import CORE, GROUPED
    watched = {("", "services"), ("", "pods")} | {(g, r) for kind, (g, _, r) in GROUPED.items()}   # namespaced; Namespace below
    assert granted == watched
    root = [doc for doc in docs if doc["kind"] == "Role" and doc["metadata"].get("namespace") == "istio-system"][0]
    assert {r for rule in root["rules"] for r in rule["resources"]} == {"authorizationpolicies", "peerauthentications"}
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for doc in docs if doc["kind"].endswith("Role") for rule in doc["rules"])
    cluster = [doc for doc in docs if doc["kind"] == "ClusterRole"]
    assert [(r["resources"], r["resourceNames"]) for doc in cluster for r in doc["rules"]] == [(["namespaces"], ["bookinfo"])]
