"""Work pools that ``stashflow deploy --work-pool`` creates when they are missing.

``process`` (the default) runs flow runs as processes of ``prefect worker start``; ``kubernetes``
runs each flow run as a Job in the cluster, with prefect-kubernetes' worker, from the base job
template below: prefect-kubernetes' own, with stashflow's defaults (the ``stashflow`` ServiceAccount
that ``stashflow install`` makes, in the plans' namespace, an image with stashflow installed). A pool
that exists is the user's: it is used as it is, never changed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stashflow.addons.incluster import STASHFLOW_IMAGE as DEFAULT_IMAGE
from stashflow.addons.rbac import NAME as SERVICE_ACCOUNT


class PoolType(StrEnum):
    PROCESS = "process"
    KUBERNETES = "kubernetes"
    STASHFLOW = "stashflow"  # the stashflow worker (worker/): many flow runs in one process


class KubernetesPool(BaseModel):
    """The defaults of a new ``kubernetes`` pool's job variables (each deployment may override them)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field("default", description="Namespace of the flow-run Jobs (where stashflow install ran).")
    service_account: str = Field(SERVICE_ACCOUNT, description="ServiceAccount of the flow-run Pods: "
                                                              "the one `stashflow install` makes.")
    image: str = Field(DEFAULT_IMAGE, description="An image with stashflow installed (images/stashflow).")
    command: str | None = Field(None, description="The flow-run command; default prefect-kubernetes' "
                                                  "`prefect flow-run execute`.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the flow-run container.")

    def base_job_template(self) -> dict[str, Any]:
        from prefect_kubernetes.worker import KubernetesWorker  # heavy: only when a pool is made

        template = KubernetesWorker.get_default_base_job_template()
        variables = template["variables"]["properties"]
        variables["namespace"]["default"] = self.namespace
        variables["service_account_name"]["default"] = self.service_account
        variables["image"]["default"] = self.image
        if self.command:
            variables["command"]["default"] = self.command
        if self.env:
            variables["env"]["default"] = dict(self.env)
        return template


async def ensure_pool(client: Any, name: str, pool_type: PoolType | None, kubernetes: KubernetesPool | None = None
                      ) -> str | None:
    """Create the pool when it is missing (``pool_type``, default process); returns its type if it was
    created. A pool that exists is left alone; one of another type than asked for explicitly is an error
    (its runs would not run where meant)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from stashflow.addons.errors import InputError

    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        wanted = pool_type or PoolType.PROCESS
        template = (kubernetes or KubernetesPool()).base_job_template() if wanted is PoolType.KUBERNETES else None
        try:
            await client.create_work_pool(WorkPoolCreate.model_validate(dict(
                name=name, type=wanted.value, **({"base_job_template": template} if template else {}))))
            return wanted.value
        except ObjectAlreadyExists:  # a worker starting on this pool made it meanwhile: check that one
            pool = await client.read_work_pool(name)
    if pool_type is not None and pool.type != pool_type.value:
        raise InputError(f'work pool "{name}" exists with type {pool.type}, not {pool_type.value}',
                         code="invalid-argument", field="--pool-type",
                         hint=f"use --pool-type {pool.type}, or another pool name; nothing was changed")
    return None
