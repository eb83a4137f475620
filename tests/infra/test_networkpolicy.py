"""infra/networkpolicy.yaml: who can open a connection to the Ray pods, worked out from the
policies with the pods' real labels (those the manifests give plus those KubeRay adds).

Only the cluster's own Ray pods reach every port of the head; the RayJob submitter and the
KubeRay operator reach the dashboard port and nothing else; other pods reach nothing; and no
ultrastyle pod reaches the cloud's instance metadata service.
"""

from __future__ import annotations

import pytest
from infra_checks import NAMESPACE, Endpoint, break_manifest, connection_allowed, documents

DOCS = list(documents())
POLICIES = [doc for name, doc in DOCS if doc["kind"] == "NetworkPolicy"]
(STYLIZE,) = [doc for _, doc in DOCS if doc["kind"] == "RayJob" and "stylize" in doc["metadata"]["generateName"]]


def _ray_pod(node_type: str) -> Endpoint:
    """A Ray pod of the stylize RayJob: its template's labels and those KubeRay sets on every Ray pod."""
    spec = STYLIZE["spec"]["rayClusterSpec"]
    group = spec["headGroupSpec"] if node_type == "head" else spec["workerGroupSpecs"][0]
    labels = {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes", "ray.io/node-type": node_type,
              "ray.io/cluster": "ultrastyle-stylize-x7k2p-raycluster", "ray.io/group": "headgroup"}
    return Endpoint(NAMESPACE, labels)


HEAD, WORKER = _ray_pod("head"), _ray_pod("worker")
SUBMITTER = Endpoint(NAMESPACE, {**STYLIZE["spec"]["submitterPodTemplate"]["metadata"]["labels"],
                                 "ray.io/originated-from-crd": "RayJob"})
OPERATOR = Endpoint("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
NEIGHBOUR = Endpoint(NAMESPACE, {"app": "something-else"})
ELSEWHERE = Endpoint("other-team", dict(WORKER.labels))  # same labels, another namespace
GCS, DASHBOARD, CLIENT, RAYLET = 6379, 8265, 10001, 12345


@pytest.mark.parametrize(
    ("source", "port", "allowed"),
    [
        (WORKER, GCS, True), (WORKER, DASHBOARD, True), (WORKER, RAYLET, True),
        (SUBMITTER, DASHBOARD, True), (SUBMITTER, GCS, False), (SUBMITTER, CLIENT, False),
        (OPERATOR, DASHBOARD, True), (OPERATOR, GCS, False),
        (NEIGHBOUR, DASHBOARD, False), (NEIGHBOUR, GCS, False), (NEIGHBOUR, CLIENT, False),
        (ELSEWHERE, GCS, False), (ELSEWHERE, DASHBOARD, False),
    ],
    ids=lambda x: str(x.labels.get("app.kubernetes.io/component", x.namespace)) if isinstance(x, Endpoint) else str(x),
)
def test_who_reaches_the_head(source, port, allowed):
    assert connection_allowed(POLICIES, source, HEAD, port) is allowed


@pytest.mark.parametrize(("source", "allowed"), [(HEAD, True), (WORKER, True), (SUBMITTER, False),
                                                 (NEIGHBOUR, False), (ELSEWHERE, False)])
def test_who_reaches_a_worker(source, allowed):
    assert connection_allowed(POLICIES, source, WORKER, RAYLET) is allowed


def test_no_pod_reaches_the_instance_metadata_service():
    metadata_service = Endpoint("", {}, ip="169.254.169.254")
    s3 = Endpoint("", {}, ip="52.216.8.1")
    dns = Endpoint("kube-system", {"k8s-app": "kube-dns"}, ip="10.0.0.10")
    for pod in (HEAD, WORKER, SUBMITTER):
        assert not connection_allowed(POLICIES, pod, metadata_service, 80)
        assert connection_allowed(POLICIES, pod, s3, 443)
        assert connection_allowed(POLICIES, pod, dns, 53, "UDP")


def test_without_the_policies_everything_reaches_the_head():
    """The yardstick: the same connections are all open when no policy selects the pods."""
    for source in (NEIGHBOUR, ELSEWHERE, SUBMITTER):
        assert connection_allowed([], source, HEAD, GCS)


def test_a_broken_policy_lets_the_submitter_reach_every_port():
    (head_policy,) = [p for p in POLICIES if p["metadata"]["name"] == "ultrastyle-ray-head"]
    broken = break_manifest(head_policy, "spec/ingress/1/ports", None)
    others = [p for p in POLICIES if p is not head_policy]
    assert connection_allowed([broken, *others], SUBMITTER, HEAD, GCS)
