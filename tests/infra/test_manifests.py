"""infra/*.yaml: a strict schema check of every manifest, and the settings that keep the cluster
closed (token auth, namespace admission, no exposed dashboard, deadlines, pinned images).

See infra_checks.py for what the schemas are. A broken copy of a real manifest must fail each
check, so the checks are known to be able to fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from infra_checks import (
    K8S_VERSIONS,
    KINDS_WITHOUT_PODS,
    NAMESPACE,
    RAY_CLUSTER_SPEC,
    RAY_JOB_SPEC,
    break_manifest,
    crd_errors,
    crd_field,
    documents,
    schema_errors,
    typed_fields,
)

DOCS = list(documents())
IDS = [f"{name}:{doc['kind']}:{doc['metadata'].get('name') or doc['metadata'].get('generateName')}"
       for name, doc in DOCS]


def _doc(name: str, kind: str) -> dict:
    (found,) = [doc for file, doc in DOCS if file == name and doc["kind"] == kind]
    return found


def test_every_manifest_file_is_read():
    files = {name for name, _ in DOCS}
    assert files == {p.name for p in Path(DOCS[0][0]).parent.glob("*.yaml")} | files  # nothing skipped
    assert {"raycluster.yaml", "rayjob-stylize.yaml", "distill-rayjob.yaml", "distill-cronjob.yaml",
            "namespace.yaml", "access.yaml", "networkpolicy.yaml"} <= files
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds <= {"RayCluster", "RayJob", "CronJob", *KINDS_WITHOUT_PODS}, kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), DOCS, ids=IDS)
def test_manifest_passes_the_strict_schema(name, doc, version):
    assert schema_errors(doc, version) == []


@pytest.mark.parametrize(
    ("name", "kind", "path", "value", "expected"),
    [
        # KubeRay fields: a misspelt key, a wrong type, a value outside the enum, a missing template.
        ("rayjob-stylize.yaml", "RayJob", "spec/rayClusterSpec/authOptions/mod", "token", "'mod' was unexpected"),
        ("rayjob-stylize.yaml", "RayJob", "spec/activeDeadlineSeconds", "1d", "'1d' is not of type 'integer'"),
        ("rayjob-stylize.yaml", "RayJob", "spec/preRunningDeadlineSeconds", 0, "0 is less than the minimum of 1"),
        ("raycluster.yaml", "RayCluster", "spec/authOptions/mode", "open", "'open' is not one of"),
        ("raycluster.yaml", "RayCluster", "spec/headGroupSpec/template", None, "'template' is a required property"),
        # Kubernetes types inside KubeRay's: the pod template and the autoscaler's security context.
        ("rayjob-stylize.yaml", "RayJob", "spec/submitterPodTemplate/spec/containers/0/securityContex", {},
         "'securityContex' was unexpected"),
        ("raycluster.yaml", "RayCluster", "spec/autoscalerOptions/securityContext/readOnlyRootFilesystem", "yes",
         "'yes' is not of type 'boolean'"),
        # Kubernetes' own objects.
        ("distill-cronjob.yaml", "CronJob", "spec/jobTemplate/spec/activeDeadline", 600,
         "'activeDeadline' was unexpected"),
        ("networkpolicy.yaml", "NetworkPolicy", "spec/podSelecter", {}, "'podSelecter' was unexpected"),
        ("access.yaml", "Role", "rules/0/verbs", "create", "'create' is not of type 'array'"),
    ],
)
def test_a_broken_manifest_fails_the_schema_check(name, kind, path, value, expected):
    docs = [doc for file, doc in DOCS if file == name and doc["kind"] == kind]
    broken = break_manifest(docs[0], path, value)
    errors = [e for version in K8S_VERSIONS for e in schema_errors(broken, version)]
    assert errors and all(expected in " ".join(schema_errors(broken, v)) for v in K8S_VERSIONS), errors


def test_an_unknown_kind_has_no_schema():
    assert "Couldn't find schema" in schema_errors({"apiVersion": "example.com/v1", "kind": "Gadget"}, "1.32")[0]


_CRDS = os.environ.get("KUBERAY_CRDS")


@pytest.mark.skipif(not _CRDS, reason="set KUBERAY_CRDS to a folder of KubeRay's ray.io_rayclusters.yaml and "
                                      "ray.io_rayjobs.yaml (ray-operator/config/crd/bases of a release) to run")
def test_typed_schema_agrees_with_kuberay_crds():
    """The typed schema declares only fields KubeRay has, with KubeRay's types and enums, and the
    manifests pass KubeRay's own schemas too (closed to unknown fields, as strict validation is)."""
    folder = Path(_CRDS)
    crds = {"RayCluster": folder / "ray.io_rayclusters.yaml", "RayJob": folder / "ray.io_rayjobs.yaml"}
    for kind, schema in (("RayCluster", RAY_CLUSTER_SPEC), ("RayJob", RAY_JOB_SPEC)):
        for path, sub in typed_fields(schema):
            real = crd_field(crds[kind], path)
            assert real is not None, f"{kind} spec.{path} is not a KubeRay field"
            if "type" in sub:
                assert real.get("type") == sub["type"], f"{kind} spec.{path}: {real.get('type')} in the CRD"
            if "enum" in sub and "enum" in real:
                assert set(sub["enum"]) == set(real["enum"]), f"{kind} spec.{path}: {real['enum']} in the CRD"
    for name, doc in DOCS:
        if doc["kind"] in crds:
            assert crd_errors(doc, crds[doc["kind"]]) == [], name
    broken = break_manifest(_doc("rayjob-stylize.yaml", "RayJob"), "spec/rayClusterSpec/authOptions/mod", "token")
    assert any("'mod' was unexpected" in e for e in crd_errors(broken, crds["RayJob"]))


def _ray_cluster_specs():
    for name, doc in DOCS:
        if doc["kind"] == "RayCluster":
            yield name, doc["spec"]
        elif doc["kind"] == "RayJob":
            yield name, doc["spec"]["rayClusterSpec"]


@pytest.mark.parametrize(("name", "spec"), list(_ray_cluster_specs()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_ray_cluster_requires_a_token_and_exposes_nothing(name, spec):
    assert spec["authOptions"] == {"mode": "token"}  # a token KubeRay generates per cluster
    head = spec["headGroupSpec"]
    assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress")
    assert spec["rayVersion"] == "2.58.0"
    # Only the ports the workers and the submitter use are published on the head's Service.
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265}


def test_nothing_is_exposed_outside_the_cluster():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert not kinds & {"Service", "Ingress", "Route", "Gateway", "HTTPRoute"}


def test_every_object_lives_in_the_namespace_that_enforces_restricted():
    namespace = _doc("namespace.yaml", "Namespace")
    labels = namespace["metadata"]["labels"]
    assert namespace["metadata"]["name"] == NAMESPACE
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['kind']} outside {NAMESPACE}"
    for subject in _doc("access.yaml", "RoleBinding")["subjects"]:
        assert subject.get("namespace") == NAMESPACE


def test_the_scheduler_may_only_create_rayjobs():
    roles = [doc for _, doc in DOCS if doc["kind"] in ("Role", "ClusterRole")]
    assert [r["metadata"]["name"] for r in roles] == ["ultrastyle-distill-scheduler"]
    assert roles[0]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]
    accounts = [doc for _, doc in DOCS if doc["kind"] == "ServiceAccount"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    assert len({a["metadata"]["name"] for a in accounts}) == len(accounts) == 6


def test_scheduled_work_cannot_block_or_run_forever():
    cron = _doc("distill-cronjob.yaml", "CronJob")["spec"]
    job = cron["jobTemplate"]["spec"]
    assert cron["concurrencyPolicy"] in ("Forbid", "Replace") and cron["startingDeadlineSeconds"] <= 3600
    # A creator stuck (e.g. pulling its image) fails long before the next night.
    assert job["activeDeadlineSeconds"] <= 3600 and job["backoffLimit"] <= 3
    for name, doc in DOCS:
        if doc["kind"] == "RayJob":
            spec = doc["spec"]
            assert spec["preRunningDeadlineSeconds"] <= 3600, name
            assert spec["activeDeadlineSeconds"] <= 86400, name
            assert spec["shutdownAfterJobFinishes"] is True and "backoffLimit" in spec, name
    nightly = _doc("distill-rayjob.yaml", "RayJob")["spec"]
    assert nightly["activeDeadlineSeconds"] < 86400  # one night's run ends before the next starts
