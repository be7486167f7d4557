"""deploy/: the manifests validate (kubernetes-validate for the core kinds, `waypoint check` for the routes and
policies), the plain rendering matches the kustomize base, the Dockerfile ships exactly the libraries the binary
links, and the Deployment's flags are ones the binary accepts."""
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BINARY, ROOT, http_request

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
    """The container's arguments against local stand-ins for the mounts and for istiod: the proxy gets its
    certificate and becomes ready on the health port."""
    from fake_istiod import FakeIstiod
    docs = {doc["kind"]: doc for _, doc in base_documents()}
    args = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    istiod = FakeIstiod(str(tmp_path))
    token = tmp_path / "istio-token"
    token.write_text(istiod.allow("default", "waypoint"))
    config = tmp_path / "config"
    config.mkdir()
    (config / "gateway.yaml").write_text((BASE / "gateway.yaml").read_text())
    local = {"/etc/waypoint/config": str(config), "istiod.istio-system.svc:15012": f"127.0.0.1:{istiod.port}"}
    replaced = []
    for a in args:
        for k, v in local.items():
            a = a.replace(k, v)
        a = re.sub(r"(0\.0\.0\.0|127\.0\.0\.1):(15008|8080|15000|15020|15021)$", "127.0.0.1:0", a)
        replaced.append(a)
    # Where the pod's mounts put the token and the root (the defaults, checked below), here.
    replaced += ["--ca-server-name", FakeIstiod.SERVER_NAME, "--ca-root", istiod.root_path, "--ca-token-file", str(token)]
    proc = subprocess.Popen([str(BINARY), *replaced], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "ready" not in line and proc.poll() is None:
            line = proc.stderr.readline()
        health = int(re.search(r"health=127\.0\.0\.1:(\d+)", line).group(1))
        deadline = time.time() + 10
        while http_request(health, "GET", "/healthz/ready", host="probe")[0] != 200:
            assert time.time() < deadline, "not ready"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        istiod.stop()


def run_defaults():
    """The binary's default for each `run` flag that has one."""
    text = subprocess.run([str(BINARY), "run", "--help"], capture_output=True, text=True).stdout
    entries = re.findall(r"--([a-z-]+) <[^>]+> (.*?)(?= --[a-z]|$)", re.sub(r"\s+", " ", text))
    return {flag: m.group(1) for flag, help in entries if (m := re.search(r"\(default: (\S+?)\)", help))}


def test_mounts_are_where_the_binary_looks_for_the_token_and_the_mesh_root():
    defaults = run_defaults()
    pod = {doc["kind"]: doc for _, doc in base_documents()}["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}
    assert f'{mounts["istio-token"]}/{token["path"]}' == defaults["ca-token-file"] == "/var/run/secrets/tokens/istio-token"
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}   # key root-cert.pem, as istiod writes it
    assert f'{mounts["istiod-ca-cert"]}/root-cert.pem' == defaults["ca-root"]
    assert pod["serviceAccountName"] == "waypoint"


def apply_json_patch(doc, operations):
    """RFC 6902 add/replace/remove/test, as kustomize applies an overlay's patches."""
    for op in operations:
        *parents, last = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
        target = doc
        for p in parents:
            target = target[p]
        if op["op"] == "test":
            assert target[last] == op["value"], op
        elif op["op"] == "remove":
            del target[last]
        elif op["op"] == "add" and last == "-":
            target.append(op["value"])
        elif op["op"] == "add" and isinstance(target, list):
            target.insert(last, op["value"])
        else:
            target[last] = op["value"]
    return doc


def overlay(name):
    """The base with the overlay's patches applied, by kind."""
    spec = yaml.safe_load((DEPLOY / "overlays" / name / "kustomization.yaml").read_text())
    docs = {doc["kind"]: doc for _, doc in base_documents()}
    for patch in spec.get("patches", []):
        apply_json_patch(docs[patch["target"]["kind"]], yaml.safe_load(patch["patch"]))
    return spec["namespace"], docs


@pytest.mark.parametrize("name", ["example", "kubernetes", "spiffe-files"])
def test_gateway_is_a_manually_deployed_waypoint_in_every_overlay(name):
    namespace, docs = overlay(name)
    gateway = docs["Gateway"]["spec"]
    # One Hostname address: istiod starts no Envoy for it and fills status.addresses from this Service.
    assert gateway["addresses"] == [{"type": "Hostname", "value": f'{docs["Service"]["metadata"]["name"]}.{namespace}.svc.cluster.local'}]
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == docs["Gateway"]["metadata"]["name"]


def test_spiffe_files_overlay_takes_the_certificate_from_the_csi_driver():
    _, docs = overlay("spiffe-files")
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert not any(a.startswith("--ca-address") for a in args)
    assert {"--cert=/var/run/secrets/waypoint/tls.crt", "--key=/var/run/secrets/waypoint/tls.key",
            "--ca=/var/run/secrets/waypoint/ca.crt"} <= set(args)
    assert [v["name"] for v in pod["volumes"]] == ["config", "identity"]
    assert pod["volumes"][1]["csi"]["driver"] == "spiffe.csi.cert-manager.io"
    assert {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}["identity"] == "/var/run/secrets/waypoint"


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
    # Secrets (WatchedKind.secret): only the ones DestinationRules name, by resourceNames
    assert granted == watched | {("", "secrets")}
    secrets = [rule for doc in docs if doc["kind"] == "Role" for rule in doc["rules"] if rule["resources"] == ["secrets"]]
    assert len(secrets) == 1 and secrets[0]["resourceNames"]
    root = [doc for doc in docs if doc["kind"] == "Role" and doc["metadata"].get("namespace") == "istio-system"][0]
    assert {r for rule in root["rules"] for r in rule["resources"]} == {
        "authorizationpolicies", "peerauthentications", "requestauthentications", "configmaps"}
    # of the root namespace's ConfigMaps, the mesh config only (WatchedKind.meshConfig)
    assert [rule.get("resourceNames") for rule in root["rules"] if rule["resources"] == ["configmaps"]] == [["istio"]]
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for doc in docs if doc["kind"].endswith("Role") for rule in doc["rules"])
    cluster = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ClusterRole"}
    assert [(r["resources"], r["resourceNames"]) for r in cluster["waypoint-bookinfo-namespace-reader"]["rules"]] == [
        (["namespaces"], ["bookinfo"])]
    # Backends in other namespaces: one Service, its EndpointSlices and Pods, the namespace's DestinationRules and
    # ReferenceGrants (WatchedKind.service, .pods, .destinationRules, .referenceGrants); nothing else cluster-wide.
    assert {(g, r) for rule in cluster["waypoint-backend-reader"]["rules"] for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices"), ("gateway.networking.k8s.io", "referencegrants"),
        ("networking.istio.io", "destinationrules")}
    assert set(cluster) == {"waypoint-bookinfo-namespace-reader", "waypoint-backend-reader"}
