"""Checks of the Kubernetes manifests in infra/: a strict schema check and the "restricted" Pod
Security Standard, both returning readable findings so a test can show what is wrong.

Schemas: Kubernetes' own objects are validated with kubernetes-validate's strict JSON schemas
(``additionalProperties: false`` everywhere, so a misspelt field fails). KubeRay's RayCluster
and RayJob are validated against :data:`RAY_CLUSTER_SPEC`/:data:`RAY_JOB_SPEC`, a typed
schema of the KubeRay fields these manifests use (types, enums and ranges as KubeRay 1.6's
CRDs give them), whose pod templates, resources and security contexts are Kubernetes'
strict schemas again. A field KubeRay has but this schema lacks fails until it is added here;
``test_typed_schema_agrees_with_kuberay_crds`` checks the schema against KubeRay's CRDs
when they are at hand.

Pod security: every pod template (RayCluster head and worker groups, RayJob submitters, the
CronJob's pod) is checked against the rules of the Pod Security Standards' "restricted"
profile (which includes "baseline"), as the namespace's admission enforces them, including the
containers KubeRay adds to a pod (the autoscaler in an autoscaling head, built from
``autoscalerOptions``; the ``wait-gcs-ready`` init container copies the Ray container's
security context, so it passes when that does).
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

__all__ = [
    "IMAGE_PLACEHOLDER",
    "INFRA",
    "K8S_VERSIONS",
    "KINDS_WITHOUT_PODS",
    "NAMESPACE",
    "RAY_CLUSTER_SPEC",
    "RAY_JOB_SPEC",
    "Endpoint",
    "PodTemplate",
    "break_manifest",
    "connection_allowed",
    "crd_errors",
    "crd_field",
    "documents",
    "house_violations",
    "pod_templates",
    "restricted_violations",
    "schema_errors",
    "typed_fields",
]

INFRA = Path(__file__).resolve().parents[2] / "infra"
# Kinds that hold no pod template (every other kind must be known to pod_templates()).
KINDS_WITHOUT_PODS = ("ConfigMap", "Namespace", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount")
NAMESPACE = "ultrastyle"
# The oldest Kubernetes the manifests support and the newest whose schemas are at hand.
K8S_VERSIONS = ("1.32", "1.37")
# Filled by the deploy step with the digest of the image infra/Dockerfile built.
IMAGE_PLACEHOLDER = "REGISTRY/ultrastyle@sha256:DIGEST"
_DIGEST_PINNED = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")

_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."


def _k8s(name: str) -> dict[str, str]:
    """A reference to Kubernetes' strict schema of ``name`` (``"api.core.v1.PodTemplateSpec"``)."""
    return {"$ref": _DEFS + name}


def _obj(properties: dict[str, Any], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: only ``properties``, so a misspelt or unknown field is an error."""
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_POSITIVE_INT32 = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

RAY_CLUSTER_SPEC: dict[str, Any] = _obj(
    {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "authOptions": _obj({"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"}}),
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": _obj(
            {
                "idleTimeoutSeconds": _INT32,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "image": {"type": "string"},
                "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
                "env": {"type": "array", "items": _k8s("api.core.v1.EnvVar")},
                "resources": _k8s("api.core.v1.ResourceRequirements"),
                "securityContext": _k8s("api.core.v1.SecurityContext"),
                "volumeMounts": {"type": "array", "items": _k8s("api.core.v1.VolumeMount")},
            }
        ),
        "headGroupSpec": _obj(
            {
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                "enableIngress": {"type": "boolean"},
                "rayStartParams": _STRINGS,
                "template": _k8s("api.core.v1.PodTemplateSpec"),
            },
            required=("template",),
        ),
        "workerGroupSpecs": {
            "type": "array",
            "items": _obj(
                {
                    "groupName": {"type": "string", "minLength": 1},
                    "replicas": _INT32,
                    "minReplicas": _INT32,
                    "maxReplicas": _INT32,
                    "idleTimeoutSeconds": _INT32,
                    "rayStartParams": _STRINGS,
                    "template": _k8s("api.core.v1.PodTemplateSpec"),
                },
                required=("groupName", "maxReplicas", "minReplicas", "template"),
            ),
        },
    },
    required=("headGroupSpec",),
)

RAY_JOB_SPEC: dict[str, Any] = _obj(
    {
        "entrypoint": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": _INT32,
        "activeDeadlineSeconds": _POSITIVE_INT32,
        "preRunningDeadlineSeconds": _POSITIVE_INT32,
        "backoffLimit": _INT32,
        "submitterConfig": _obj({"backoffLimit": _INT32}),
        "submitterPodTemplate": _k8s("api.core.v1.PodTemplateSpec"),
        "rayClusterSpec": RAY_CLUSTER_SPEC,
    }
)


def _ray_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": _k8s("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )


_RAY_SCHEMAS = {
    "RayCluster": _ray_resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _ray_resource("RayJob", RAY_JOB_SPEC),
}


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, document)`` for every YAML document in infra/, in file order."""
    for path in sorted(INFRA.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def _registry(version: str) -> Registry:
    """Kubernetes ``version``'s strict definitions, as the target of :func:`_k8s` references."""
    folder = files(kubernetes_validate) / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Every schema error of ``doc`` on Kubernetes ``version`` (``"1.32"``), as ``path: message``."""
    kind = doc.get("kind")
    if kind in _RAY_SCHEMAS:
        validator = jsonschema.Draft202012Validator(_RAY_SCHEMAS[kind], registry=_registry(version))
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


@dataclass
class PodTemplate:
    """One pod template of a manifest, with the containers KubeRay adds to the pod.

    Attributes:
        where: ``file: kind name path`` for messages.
        metadata: the template's metadata (labels, annotations).
        spec: the pod spec as written.
        added: containers the operator adds (the autoscaler), checked like the spec's own.
    """

    where: str
    metadata: dict[str, Any]
    spec: dict[str, Any]
    added: list[dict[str, Any]] = field(default_factory=list)

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(kind, container)`` for every container, init container, ephemeral and added one."""
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for container in self.spec.get(key, []):
                yield key, container
        for container in self.added:
            yield "added by KubeRay", container


# The autoscaler KubeRay 1.6 adds to an autoscaling head when autoscalerOptions leave a field unset.
_AUTOSCALER_DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"},
                                 "limits": {"cpu": "500m", "memory": "512Mi"}}


def _cluster_templates(where: str, spec: dict[str, Any]) -> Iterator[PodTemplate]:
    head = spec["headGroupSpec"]["template"]
    added = []
    if spec.get("enableInTreeAutoscaling"):
        options = spec.get("autoscalerOptions", {})
        added.append({
            "name": "autoscaler",
            "image": options.get("image", head["spec"]["containers"][0].get("image")),
            "resources": options.get("resources", _AUTOSCALER_DEFAULT_RESOURCES),
            "securityContext": options.get("securityContext"),
            "volumeMounts": options.get("volumeMounts", []),
        })
    yield PodTemplate(f"{where} headGroupSpec", head.get("metadata", {}), head["spec"], added)
    for group in spec.get("workerGroupSpecs", []):
        template = group["template"]
        yield PodTemplate(f"{where} workerGroupSpecs[{group['groupName']}]", template.get("metadata", {}),
                          template["spec"])


def pod_templates(name: str, doc: dict[str, Any]) -> Iterator[PodTemplate]:
    """Every pod template in the document ``doc`` of file ``name``."""
    kind, title = doc.get("kind"), doc.get("metadata", {}).get("name") or doc.get("metadata", {}).get("generateName")
    where = f"{name}: {kind} {title}"
    spec = doc.get("spec", {})
    if kind == "RayCluster":
        yield from _cluster_templates(where, spec)
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            template = spec["submitterPodTemplate"]
            yield PodTemplate(f"{where} submitterPodTemplate", template.get("metadata", {}), template["spec"])
        yield from _cluster_templates(f"{where} rayClusterSpec", spec["rayClusterSpec"])
    elif kind == "CronJob":
        template = spec["jobTemplate"]["spec"]["template"]
        yield PodTemplate(f"{where} jobTemplate", template.get("metadata", {}), template["spec"])
    elif kind not in KINDS_WITHOUT_PODS:
        raise ValueError(f"{where}: no pod templates known for kind {kind}: teach pod_templates() where they are")


# The Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards/).
_BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                          "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}
_APPARMOR_OK = {"RuntimeDefault", "Localhost"}


def restricted_violations(template: PodTemplate) -> list[str]:
    """The rules of the "restricted" Pod Security Standard that ``template`` breaks, one line each."""
    spec, found = template.spec, []
    pod_sc = spec.get("securityContext") or {}

    def add(rule: str, what: str) -> None:
        found.append(f"{template.where}: {rule}: {what}")

    # Baseline.
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            add("host namespaces", f"{key} is true")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            add("hostPath volumes", f"volume {volume.get('name')} is a hostPath")
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            add("volume types", f"volume {volume.get('name')} is {sorted(kinds - _RESTRICTED_VOLUMES)}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            add("sysctls", f"{sysctl.get('name')} is not a safe sysctl")
    for key, value in (template.metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            add("AppArmor", f"annotation {key}={value}")
    scopes = [("pod", pod_sc)] + [
        (f"{kind} {c.get('name')}", c.get("securityContext") or {}) for kind, c in template.containers()
    ]
    for scope, sc in scopes:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            add("HostProcess", f"{scope} sets windowsOptions.hostProcess")
        if (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in _APPARMOR_OK:
            add("AppArmor", f"{scope} appArmorProfile is {sc['appArmorProfile']['type']}")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            add("SELinux", f"{scope} seLinuxOptions {selinux}")
        if sc.get("runAsUser") == 0:
            add("running as non-root user", f"{scope} runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in _SECCOMP_OK:
            add("seccomp", f"{scope} seccompProfile is {seccomp}")
        if sc.get("runAsNonRoot") is False:
            add("running as non-root", f"{scope} sets runAsNonRoot: false")

    # Per container.
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in _SECCOMP_OK
    for kind, container in template.containers():
        name, sc = f"{kind} {container.get('name')}", container.get("securityContext") or {}
        if sc.get("privileged"):
            add("privileged containers", f"{name} is privileged")
        if (sc.get("procMount") or "Default") != "Default":
            add("/proc mount type", f"{name} procMount is {sc['procMount']}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                add("host ports", f"{name} uses hostPort {port['hostPort']}")
        if sc.get("allowPrivilegeEscalation") is not False:
            add("privilege escalation", f"{name} does not set allowPrivilegeEscalation: false")
        if not pod_non_root and sc.get("runAsNonRoot") is not True:
            add("running as non-root", f"{name} may run as root (runAsNonRoot unset in the pod and the container)")
        if not pod_seccomp and (sc.get("seccompProfile") or {}).get("type") not in _SECCOMP_OK:
            add("seccomp", f"{name} has no RuntimeDefault/Localhost seccomp profile (nor has the pod)")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            add("capabilities", f"{name} does not drop ALL")
        for capability in capabilities.get("add", []):
            if capability != "NET_BIND_SERVICE":
                rule = "capabilities" if capability not in _BASELINE_CAPABILITIES else "capabilities (restricted)"
                add(rule, f"{name} adds {capability}")
    return found


def house_violations(template: PodTemplate) -> list[str]:
    """What the project asks beyond "restricted", one line each: read-only root filesystems,
    requests and limits on every container, images by digest, an explicit service account and
    token mount, and the label the NetworkPolicies select on."""
    spec, found = template.spec, []

    def add(what: str) -> None:
        found.append(f"{template.where}: {what}")

    if spec.get("serviceAccountName") in (None, "", "default"):
        add("runs as the namespace's default service account")
    if "automountServiceAccountToken" not in spec:
        add("does not say whether the service account token is mounted")
    if (template.metadata.get("labels") or {}).get("app.kubernetes.io/name") != "ultrastyle":
        add("lacks the label app.kubernetes.io/name: ultrastyle that infra/networkpolicy.yaml selects")
    for kind, container in template.containers():
        name, sc = f"{kind} {container.get('name')}", container.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            add(f"{name} does not set readOnlyRootFilesystem: true")
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound) or {})
            if missing:
                add(f"{name} has no {bound} for {', '.join(sorted(missing))}")
        image = container.get("image", "")
        if image != IMAGE_PLACEHOLDER and not _DIGEST_PINNED.fullmatch(image):
            add(f"{name} image {image!r} is not pinned by digest")
    return found


def break_manifest(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` at ``path`` (``"spec/rayClusterSpec/authOptions/mod"``;
    list items by index); ``value`` ``None`` deletes the key."""
    broken = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is None:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return broken


def _closed(schema: Any) -> Any:
    """``schema`` (a CRD's OpenAPI schema) with every object that lists its properties closed to
    others, as the API server's strict field validation treats unknown fields."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed and not closed.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def _crd(crd_path: Path) -> dict[str, Any]:
    """A CRD file, parsed once (KubeRay's are megabytes of YAML)."""
    return yaml.load(crd_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def crd_errors(doc: dict[str, Any], crd_path: Path) -> list[str]:
    """Schema errors of ``doc`` against a KubeRay CRD file (``ray.io_rayjobs.yaml``), strictly."""
    crd = _crd(crd_path)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == doc["apiVersion"].split("/")[1]]
    validator = jsonschema.Draft202012Validator(_closed(version["schema"]["openAPIV3Schema"]))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def typed_fields(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, schema)`` of every field :data:`RAY_CLUSTER_SPEC`/:data:`RAY_JOB_SPEC` declare
    itself (not those of Kubernetes types it refers to), ``items`` of arrays as ``[]``."""
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, sub
        if sub.get("type") == "array" and "properties" in sub.get("items", {}):
            yield from typed_fields(sub["items"], path + "[]")
        elif "properties" in sub:
            yield from typed_fields(sub, path)


def crd_field(crd_path: Path, path: str) -> dict[str, Any] | None:
    """The CRD's schema of ``spec`` field ``path`` (as :func:`typed_fields` names it), or ``None``."""
    node = _crd(crd_path)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in path.split("."):
        many = part.endswith("[]")
        node = node.get("properties", {}).get(part.removesuffix("[]"))
        if node is None:
            return None
        if many:
            node = node.get("items", {})
    return node


@dataclass(frozen=True)
class Endpoint:
    """A pod as NetworkPolicies see it: its namespace, its labels and its IP."""

    namespace: str
    labels: dict[str, str]
    ip: str = "10.0.0.1"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector matches ``labels`` (``matchLabels`` only; the manifests use no other)."""
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"selector {selector} uses more than matchLabels: extend infra_checks._selects")
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(c) for c in block.get("except", []))
    namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and _selects(peer.get("podSelector", {}), other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return not ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports)


def connection_allowed(
    policies: list[dict[str, Any]], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``policies`` let ``source`` open a connection to ``target`` on ``port``, by the
    NetworkPolicy rules: a pod selected by a policy of a direction is isolated in it, and then
    only what some selecting policy's rule allows gets through; both directions must allow."""

    def allowed(direction: str, pod: Endpoint, other: Endpoint) -> bool:
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                     and direction in p["spec"].get("policyTypes", ["Ingress"])
                     and _selects(p["spec"]["podSelector"], pod.labels)]
        return not selecting or any(
            _port_matches(rule.get("ports"), port, protocol)
            and (peers not in rule
                 or any(_peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers]))
            for p in selecting
            for rule in p["spec"].get(key, [])
        )

    return allowed("Egress", source, target) and allowed("Ingress", target, source)
