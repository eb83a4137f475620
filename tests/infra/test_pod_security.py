"""infra/*.yaml: every pod template meets the "restricted" Pod Security Standard and the
project's own rules (read-only root, requests and limits, images by digest, own service account).

The templates include what KubeRay adds to a pod (the autoscaler of an autoscaling head), and
a deliberately broken copy of a real template must fail, rule by rule.
"""

from __future__ import annotations

import pytest
from infra_checks import (
    IMAGE_PLACEHOLDER,
    PodTemplate,
    break_manifest,
    documents,
    house_violations,
    pod_templates,
    restricted_violations,
)

TEMPLATES = [t for name, doc in documents() for t in pod_templates(name, doc)]


def test_every_pod_template_is_found():
    where = [t.where for t in TEMPLATES]
    assert len(where) == 9, where  # cluster head + workers; 2 RayJobs x (submitter, head, workers); the CronJob
    (head,) = [t for t in TEMPLATES if t.where.startswith("raycluster.yaml") and "head" in t.where]
    assert [c["name"] for c in head.added] == ["autoscaler"]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.where)
def test_pod_template_meets_the_restricted_standard(template):
    assert restricted_violations(template) == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.where)
def test_pod_template_meets_the_house_rules(template):
    assert house_violations(template) == []


def test_only_the_scheduler_and_the_autoscaler_hold_an_api_token():
    mounted = [t.where for t in TEMPLATES if t.spec["automountServiceAccountToken"]]
    assert mounted == ["distill-cronjob.yaml: CronJob ultrastyle-distill-nightly jobTemplate"]
    (head,) = [t for t in TEMPLATES if t.where.startswith("raycluster.yaml") and "head" in t.where]
    token_mounts = [(kind, c["name"]) for kind, c in head.containers()
                    for m in c.get("volumeMounts", []) if m["mountPath"].startswith("/var/run/secrets/kubernetes.io")]
    assert token_mounts == [("added by KubeRay", "autoscaler")]


def test_third_party_images_are_pinned_and_ours_is_filled_in_by_the_build():
    images = {c["image"] for t in TEMPLATES for _, c in t.containers()}
    assert IMAGE_PLACEHOLDER in images
    others = images - {IMAGE_PLACEHOLDER}
    assert others and all("@sha256:" in image for image in others), others


def _template(where: str) -> PodTemplate:
    (found,) = [t for t in TEMPLATES if t.where.startswith(where)]
    return found


_WORKER = "rayjob-stylize.yaml: RayJob ultrastyle-stylize- rayClusterSpec workerGroupSpecs[gpu]"
_HEAD = "raycluster.yaml: RayCluster ultrastyle headGroupSpec"


@pytest.mark.parametrize(
    ("where", "path", "value", "rule"),
    [
        (_WORKER, "securityContext/runAsNonRoot", None, "running as non-root"),
        (_WORKER, "securityContext/runAsUser", 0, "running as non-root user"),
        (_WORKER, "securityContext/seccompProfile", {"type": "Unconfined"}, "seccomp"),
        (_WORKER, "hostNetwork", True, "host namespaces"),
        (_WORKER, "volumes/0", {"name": "tmp", "hostPath": {"path": "/tmp"}}, "hostPath volumes"),
        (_WORKER, "containers/0/securityContext/allowPrivilegeEscalation", True, "privilege escalation"),
        (_WORKER, "containers/0/securityContext/privileged", True, "privileged containers"),
        (_WORKER, "containers/0/securityContext/capabilities", {"add": ["SYS_ADMIN"]}, "capabilities"),
        (_WORKER, "containers/0/ports", [{"containerPort": 8080, "hostPort": 8080}], "host ports"),
        # The autoscaler KubeRay adds is held to the same rules as the containers written out.
        (_HEAD, "added/0/securityContext", None, "privilege escalation"),
    ],
)
def test_a_broken_pod_template_fails_the_restricted_check(where, path, value, rule):
    template = _template(where)
    if path.startswith("added/"):
        broken = PodTemplate(template.where, template.metadata, template.spec,
                             break_manifest({"added": template.added}, path, value)["added"])
    else:
        broken = PodTemplate(template.where, template.metadata, break_manifest(template.spec, path, value))
    found = restricted_violations(broken)
    assert any(f": {rule}: " in line for line in found), found


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("containers/0/securityContext/readOnlyRootFilesystem", False, "readOnlyRootFilesystem"),
        ("containers/0/resources/limits", None, "no limits for cpu, memory"),
        ("containers/0/image", "rayproject/ray:2.58.0-py311-gpu", "is not pinned by digest"),
        ("serviceAccountName", None, "default service account"),
        ("automountServiceAccountToken", None, "whether the service account token is mounted"),
    ],
)
def test_a_broken_pod_template_fails_the_house_rules(path, value, expected):
    template = _template(_WORKER)
    broken = PodTemplate(template.where, template.metadata, break_manifest(template.spec, path, value))
    found = house_violations(broken)
    assert any(expected in line for line in found), found
    assert restricted_violations(broken) == []  # these rules are the project's, beyond "restricted"
