"""The node agent's scripted outcomes drive the real job controller to the real Job conditions."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.cluster import Cluster
from localkube.helpers import create_job, job_body, job_condition, job_pods, pod_log, wait_job_finished, wait_pod
from localkube.nodeagent import (
    OUTCOME_ANNOTATION, NodeAgent, Outcome, config_error, evicted, fail, image_pull_error, never_ends,
    oom_killed, succeed, unschedulable,
)


def test_job_completes_when_the_agent_says_so(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    script = node_agent.script("backup", succeed(message='{"snapshot":"s1"}', logs=["step 1", "step 2"]))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("backup"))
            job = await wait_job_finished(api, namespace, "backup")
            assert job_condition(job) == "Complete"
            assert job.status.succeeded == 1
            (pod,) = await job_pods(api, namespace, "backup")
            assert pod.spec.node_name == node_agent.node_name
            assert pod.status.phase == "Succeeded"
            term = pod.status.container_statuses[0].state.terminated
            assert (term.exit_code, term.reason, term.message) == (0, "Completed", '{"snapshot":"s1"}')
            assert term.started_at is not None and term.finished_at is not None
            # The log comes from the agent's HTTPS endpoint, through the apiserver.
            assert await pod_log(api, namespace, pod.metadata.name, "main") == "step 1\nstep 2\n"
    asyncio.run(body())
    assert script.pods and script.pods[0].startswith(f"{namespace}/backup-")


def test_apiserver_rejects_an_invalid_job(kube_cluster: Cluster, namespace: str) -> None:
    async def body() -> None:
        async with kube_cluster.api_client() as api:
            bad = job_body("bad")
            bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"  # not allowed for Jobs
            with pytest.raises(ApiException) as e:
                await create_job(api, namespace, bad)
            assert e.value.status == 422
            assert "restartPolicy" in e.value.body
            neg = job_body("neg", backoff_limit=-1)
            with pytest.raises(ApiException) as e:
                await create_job(api, namespace, neg)
            assert e.value.status == 422
            assert (await client.BatchV1Api(api).list_namespaced_job(namespace)).items == []
    asyncio.run(body())


@pytest.mark.parametrize("outcome, exit_code, reason, pod_reason", [
    (fail(3, message="repository locked"), 3, "Error", None),
    (oom_killed(), 137, "OOMKilled", None),
    (evicted(), 137, "Error", "Evicted"),
], ids=["exit-3", "oom-killed", "evicted"])
def test_terminal_failure_classes_fail_the_job(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent,
                                               outcome: Outcome, exit_code: int, reason: str,
                                               pod_reason: str | None) -> None:
    node_agent.script("job", outcome)

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("job"))
            job = await wait_job_finished(api, namespace, "job")
            assert job_condition(job) == "Failed"
            failed = [c for c in job.status.conditions if c.type == "Failed"][0]
            assert failed.reason == "BackoffLimitExceeded"
            (pod,) = await job_pods(api, namespace, "job")
            assert pod.status.phase == "Failed"
            assert pod.status.reason == pod_reason
            term = pod.status.container_statuses[0].state.terminated
            assert (term.exit_code, term.reason) == (exit_code, reason)
            if outcome.message and pod_reason is None:
                assert term.message == outcome.message
    asyncio.run(body())


@pytest.mark.parametrize("outcome, waiting", [
    (image_pull_error(after=0.2), ["ErrImagePull", "ImagePullBackOff"]),
    (config_error(message='secret "restic-pw" not found'), ["CreateContainerConfigError"]),
], ids=["image-pull", "config-error"])
def test_pods_that_cannot_start_stay_pending(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent,
                                             outcome: Outcome, waiting: list[str]) -> None:
    node_agent.script("job", outcome)

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("job"))

            def in_final_waiting_state(p: client.V1Pod) -> bool:
                cs = p.status.container_statuses or []
                return bool(cs) and cs[0].state.waiting is not None and cs[0].state.waiting.reason == waiting[-1]
            pod = await wait_pod(api, namespace, "job", in_final_waiting_state, what=waiting[-1])
            assert pod.status.phase == "Pending"
            assert pod.spec.node_name == node_agent.node_name
            if outcome.kind == "config_error":
                assert pod.status.container_statuses[0].state.waiting.message == 'secret "restic-pw" not found'
            job = await client.BatchV1Api(api).read_namespaced_job("job", namespace)
            assert job_condition(job) is None and job.status.active == 1
            events = await client.CoreV1Api(api).list_namespaced_event(
                namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
            assert {"Scheduled", "Failed"} <= {e.reason for e in events.items}
    asyncio.run(body())


def test_unschedulable_pod_is_not_bound(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    node_agent.script("job", unschedulable(message="0/1 nodes are available: 1 Insufficient cpu."))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("job"))

            def unscheduled(p: client.V1Pod) -> bool:
                return any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or [])
            pod = await wait_pod(api, namespace, "job", unscheduled, what="PodScheduled=False")
            cond = [c for c in pod.status.conditions if c.type == "PodScheduled"][0]
            assert (cond.reason, cond.message) == ("Unschedulable", "0/1 nodes are available: 1 Insufficient cpu.")
            assert pod.spec.node_name is None and pod.status.phase == "Pending"
    asyncio.run(body())


def test_a_container_that_never_ends_meets_the_job_deadline(kube_cluster: Cluster, namespace: str,
                                                            node_agent: NodeAgent) -> None:
    node_agent.script("job", never_ends(logs=["working"]))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("job", activeDeadlineSeconds=2))
            job = await wait_job_finished(api, namespace, "job", timeout=60)
            failed = [c for c in job.status.conditions if c.type == "Failed"][0]
            assert failed.reason == "DeadlineExceeded"

            async def pods_gone() -> bool:  # the job controller deletes it; the agent confirms the deletion
                return not await job_pods(api, namespace, "job")
            from localkube.helpers import wait_until
            await wait_until(pods_gone, 30, what="the deadline-exceeded pod to be deleted")
    asyncio.run(body())


def test_a_sequence_of_outcomes_drives_retries(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    script = node_agent.script("flaky", fail(1), succeed())

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("flaky", backoff_limit=2))
            job = await wait_job_finished(api, namespace, "flaky", timeout=90)
            assert job_condition(job) == "Complete"
            assert (job.status.failed, job.status.succeeded) == (1, 1)
            phases = [p.status.phase for p in await job_pods(api, namespace, "flaky")]
            assert sorted(phases) == ["Failed", "Succeeded"]
    asyncio.run(body())
    assert len(script.pods) == 2


def test_restart_policy_on_failure_restarts_in_place(kube_cluster: Cluster, namespace: str,
                                                     node_agent: NodeAgent) -> None:
    node_agent.script("crashy", fail(2, after=0.1))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            b = job_body("crashy", backoff_limit=1)
            b["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
            await create_job(api, namespace, b)
            job = await wait_job_finished(api, namespace, "crashy", timeout=60)
            failed = [c for c in job.status.conditions if c.type == "Failed"][0]
            assert failed.reason == "BackoffLimitExceeded"
    asyncio.run(body())


def test_pods_can_carry_their_own_script(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    node_agent.script(lambda pod: True, succeed())  # the annotation wins over any script

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body(
                "annotated", annotations={OUTCOME_ANNOTATION: fail(42, message="from the annotation").to_json()}))
            job = await wait_job_finished(api, namespace, "annotated")
            assert job_condition(job) == "Failed"
            (pod,) = await job_pods(api, namespace, "annotated")
            term = pod.status.container_statuses[0].state.terminated
            assert (term.exit_code, term.message) == (42, "from the annotation")
    asyncio.run(body())
    rec = [r for r in node_agent.records if r.job == "annotated"][0]
    assert rec.source == "annotation"


def test_scripts_match_by_labels_and_default_applies_otherwise(kube_cluster: Cluster, namespace: str,
                                                               node_agent: NodeAgent) -> None:
    node_agent.script({"app": "restic"}, fail(5))
    node_agent.default = succeed(message="default")

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            labelled = job_body("labelled")
            labelled["spec"]["template"]["metadata"]["labels"] = {"app": "restic"}
            await create_job(api, namespace, labelled)
            await create_job(api, namespace, job_body("plain"))
            assert job_condition(await wait_job_finished(api, namespace, "labelled")) == "Failed"
            assert job_condition(await wait_job_finished(api, namespace, "plain")) == "Complete"
            (pod,) = await job_pods(api, namespace, "plain")
            assert pod.status.container_statuses[0].state.terminated.message == "default"
    asyncio.run(body())


def test_outcomes_round_trip_through_the_annotation_form() -> None:
    for o in (succeed(logs=["a"], message="m"), fail(7, reason="Error"), oom_killed(), image_pull_error(),
              unschedulable(), evicted(), never_ends(), config_error()):
        assert Outcome.parse(o.to_json()) == o
    assert Outcome.parse("run").kind == "run"
    with pytest.raises(ValueError):
        Outcome.parse("explode")
