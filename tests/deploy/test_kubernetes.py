"""deploy/kubernetes: the kustomization built as kustomize builds it, each resource valid
against the Kubernetes API schema, and what the schema cannot see: the daemons' flags,
probes on the ports they listen on, limits and lockdown on every container, selectors
and names that meet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.commands import parse_command_line

BASE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# Containers that need root on their host: the node's preparation (chown of the piece
# store) and the hosts.toml writer (containerd's directory is root's).
ROOT_CONTAINERS = {("swarmpull-node", "prepare"), ("swarmpull-node", "containerd-hosts")}


def build(base: Path) -> list[dict]:
    """The resources ``kubectl kustomize base`` prints, for the fields this base uses:
    resources, namespace, labels (metadata only) and images."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert not unknown, f"kustomization.yaml uses {unknown}: teach build() them"
    docs = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((base / name).read_text())
        if doc is not None
    ]
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}
    for doc in docs:
        metadata = doc["metadata"]
        if doc["kind"] != "Namespace":
            metadata["namespace"] = kustomization["namespace"]
        for entry in kustomization["labels"]:
            assert not entry.get("includeSelectors") and not entry.get("includeTemplates")
            metadata.setdefault("labels", {}).update(entry["pairs"])
        for container in _containers(doc):
            container["image"] = images.get(container["image"], container["image"])
    return docs


def _pod_spec(doc: dict) -> dict | None:
    return doc["spec"]["template"]["spec"] if doc["kind"] in WORKLOADS else None


def _containers(doc: dict) -> list[dict]:
    spec = _pod_spec(doc)
    return [] if spec is None else spec.get("initContainers", []) + spec["containers"]


RESOURCES = build(BASE)
BY_NAME = {(doc["kind"], doc["metadata"]["name"]): doc for doc in RESOURCES}
PODS = [doc for doc in RESOURCES if doc["kind"] in WORKLOADS]


def _ids(docs: list[dict]) -> list[str]:
    return [f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs]


def test_the_base_holds_what_a_cluster_needs():
    assert set(BY_NAME) == {
        ("Namespace", "swarmpull"),
        ("Service", "swarmpull-redis"),
        ("Deployment", "swarmpull-redis"),
        ("NetworkPolicy", "swarmpull-redis"),
        ("Service", "swarmpull-supernode"),
        ("ConfigMap", "swarmpull-supernode"),
        ("StatefulSet", "swarmpull-supernode"),
        ("PodDisruptionBudget", "swarmpull-supernode"),
        ("DaemonSet", "swarmpull-node"),
    }
    assert all(doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "swarmpull" for doc in RESOURCES)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_build_matches_kubectl_kustomize():
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, check=True)
    assert sorted(_ids(list(yaml.safe_load_all(out.stdout))), key=str) == sorted(_ids(RESOURCES), key=str)
    for doc in yaml.safe_load_all(out.stdout):
        assert doc == BY_NAME[(doc["kind"], doc["metadata"]["name"])]


@pytest.mark.parametrize("doc", RESOURCES, ids=_ids(RESOURCES))
def test_resource_is_valid_against_the_kubernetes_schema(doc):
    # strict: a misspelt or misplaced field is an error, not silently dropped
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_schema_validation_catches_a_misplaced_field():
    doc = yaml.safe_load(yaml.safe_dump(BY_NAME[("DaemonSet", "swarmpull-node")]))
    doc["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("doc", PODS, ids=_ids(PODS))
def test_every_container_is_limited_and_locked_down(doc):
    spec = _pod_spec(doc)
    assert spec["automountServiceAccountToken"] is False  # none of them calls the API
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(doc):
        where = f"{doc['metadata']['name']}/{container['name']}"
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, where
        context = spec["securityContext"] | container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        if (doc["metadata"]["name"], container["name"]) in ROOT_CONTAINERS:
            assert context["runAsUser"] == 0, where
            assert set(context["capabilities"].get("add", [])) <= {"CHOWN"}, where
        else:
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, where
            assert "add" not in context["capabilities"], where


def _swarmpull_containers() -> list[tuple[str, dict]]:
    return [
        (doc["metadata"]["name"], container)
        for doc in PODS
        for container in _containers(doc)
        if container["image"].rsplit(":", 1)[0].endswith("/swarmpull") and "args" in container
    ]


def _expand(arg: str, container: dict) -> str:
    """``$(VAR)`` as the kubelet expands it, from the container's env (sample values)."""
    samples = {
        "metadata.name": "swarmpull-supernode-0",
        "spec.nodeName": "node-1",
        "status.hostIP": "10.0.0.7",
    }
    env = {
        e["name"]: e.get("value") or samples[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container.get("env", [])
    }

    def value(match: re.Match) -> str:
        assert match[1] in env, f"{container['name']}: $({match[1]}) is not in its env"
        return env[match[1]]

    return re.sub(r"\$\(([A-Z_]+)\)", value, arg)


@pytest.mark.parametrize(
    ("workload", "container"),
    _swarmpull_containers(),
    ids=[f"{w}/{c['name']}" for w, c in _swarmpull_containers()],
)
def test_swarmpull_command_lines_parse(workload, container):
    args = parse_command_line([_expand(arg, container) for arg in container["args"]])
    if args.command in ("supernode", "peer"):
        # every daemon's TLS directory is the one mounted for it
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[_flag(container, "--tls-dir")]["readOnly"] is True


def _flag(container: dict, flag: str) -> str:
    return next(arg.partition("=")[2] for arg in container["args"] if arg.startswith(f"{flag}="))


@pytest.mark.parametrize(
    ("workload", "flag"), [("swarmpull-supernode", "--listen"), ("swarmpull-node", "--api-listen")]
)
def test_daemons_are_probed_for_liveness_and_readiness_where_they_listen(workload, flag):
    doc = next(doc for doc in PODS if doc["metadata"]["name"] == workload)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    host, _, port = _flag(container, flag).rpartition(":")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path
        assert ports.get(check["port"], check["port"]) == int(port)
        if host not in ("0.0.0.0", "::"):
            assert check["host"] == host  # the kubelet reaches a loopback listener only by name
    # Under TLS the supernode answers HTTPS only; the node's local API stays plain HTTP.
    assert all(
        container[probe]["httpGet"].get("scheme", "HTTP")
        == ("HTTPS" if workload == "swarmpull-supernode" else "HTTP")
        for probe in ("livenessProbe", "readinessProbe")
    )


def test_selectors_services_and_names_meet():
    for doc in RESOURCES:
        selector = doc["spec"].get("selector") if "spec" in doc else None
        if doc["kind"] in WORKLOADS:
            assert selector["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        if doc["kind"] in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            wanted = selector if doc["kind"] == "Service" else (selector or doc["spec"]["podSelector"])
            wanted = wanted.get("matchLabels", wanted)
            matched = [
                p for p in PODS if wanted.items() <= p["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert matched, f"{doc['kind']}/{doc['metadata']['name']} selects no pod"
            if doc["kind"] == "Service":
                names = {p["name"] for c in _containers(matched[0]) for p in c.get("ports", [])}
                assert all(port["targetPort"] in names for port in doc["spec"]["ports"])
    for doc in PODS:
        spec = _pod_spec(doc)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in _containers(doc):
            assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes)
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in BY_NAME


def test_supernodes_advertise_the_names_nodes_call_them_by():
    statefulset = BY_NAME[("StatefulSet", "swarmpull-supernode")]
    supernode = statefulset["spec"]["template"]["spec"]["containers"][0]
    service = statefulset["spec"]["serviceName"]
    assert BY_NAME[("Service", service)]["spec"]["clusterIP"] == "None"  # per-pod DNS names
    advertise = _flag(supernode, "--advertise")
    assert f"$(POD_NAME).{service}:" in advertise
    # a StatefulSet's pods are NAME-0, NAME-1, ...
    pods = [f"{statefulset['metadata']['name']}-{i}" for i in range(statefulset["spec"]["replicas"])]
    node = BY_NAME[("DaemonSet", "swarmpull-node")]["spec"]["template"]["spec"]["containers"][0]
    called = [arg.partition("=")[2] for arg in node["args"] if arg.startswith("--supernode=")]
    assert called == [advertise.replace("$(POD_NAME)", pod) for pod in pods]
    assert advertise.rpartition(":")[2] == _flag(supernode, "--listen").rpartition(":")[2]


def test_the_supernodes_reach_redis_through_its_service():
    supernode = BY_NAME[("StatefulSet", "swarmpull-supernode")]["spec"]["template"]["spec"]["containers"][0]
    service = BY_NAME[("Service", "swarmpull-redis")]
    assert (
        _flag(supernode, "--redis")
        == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    )


def test_the_node_mirror_is_the_proxy_it_serves():
    spec = BY_NAME[("DaemonSet", "swarmpull-node")]["spec"]["template"]["spec"]
    hosts = next(c for c in spec["initContainers"] if c["name"] == "containerd-hosts")
    assert hosts["restartPolicy"] == "Always"  # a sidecar: it holds the files while the pod runs
    assert "--hold" in hosts["args"]
    assert _flag(hosts, "--mirror") == "http://" + _flag(spec["containers"][0], "--proxy-listen")
    assert spec["hostNetwork"] is True  # containerd reaches the proxy on the host's loopback


def test_a_supernode_gets_its_own_certificate_from_the_secret(tmp_path):
    spec = BY_NAME[("StatefulSet", "swarmpull-supernode")]["spec"]["template"]["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "tls")
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    secret, tls = tmp_path / "secret", tmp_path / "tls"
    secret.mkdir()
    tls.mkdir()
    (secret / "ca.pem").write_text("ca")
    for pod in ("swarmpull-supernode-0", "swarmpull-supernode-1"):
        (secret / f"{pod}.cert.pem").write_text(f"cert of {pod}")
        (secret / f"{pod}.key.pem").write_text(f"key of {pod}")
    script = init["command"][-1].replace(mounts["tls-secret"], str(secret)).replace(mounts["tls"], str(tls))
    subprocess.run(
        [*init["command"][:-1], script],
        env={"PATH": os.environ["PATH"], "POD_NAME": "swarmpull-supernode-1"},
        check=True,
    )
    assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (tls / "cert.pem").read_text() == "cert of swarmpull-supernode-1"
    assert (tls / "key.pem").read_text() == "key of swarmpull-supernode-1"
    assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="the node's preparation changes owners: needs root")
def test_a_node_hands_its_store_and_tls_directory_to_the_daemons_user(tmp_path):
    spec = BY_NAME[("DaemonSet", "swarmpull-node")]["spec"]["template"]["spec"]
    prepare = next(c for c in spec["initContainers"] if c["name"] == "prepare")
    daemon = next(c for c in spec["containers"] if c["name"] == "node")["securityContext"]["runAsUser"]
    script = prepare["command"][-1]
    for mount in prepare["volumeMounts"]:
        (tmp_path / mount["name"]).mkdir()
        script = script.replace(mount["mountPath"], str(tmp_path / mount["name"]))
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / "host-tls" / name).write_text(name)
    (tmp_path / "host-tls" / "key.pem").chmod(0o600)
    subprocess.run([*prepare["command"][:-1], script], env={"PATH": os.environ["PATH"]}, check=True)
    assert (tmp_path / "data").stat().st_uid == daemon
    for name, mode in (("ca.pem", 0o644), ("cert.pem", 0o644), ("key.pem", 0o600)):
        copied = (tmp_path / "tls" / name).stat()
        assert (copied.st_uid, copied.st_mode & 0o777) == (daemon, mode), name
        assert (tmp_path / "tls" / name).read_text() == name
