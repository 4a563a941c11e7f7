"""A session's hooks of one phase, run in order as Prefect task runs (``preBackup:NAME``...).

KubeStash's rules (its hooks guide): a failed pre hook stops the rest, the backup or restore is
skipped and the session Failed; post hooks run by their ``executionPolicy`` and a failed one fails
the session too. The caller records the results in ``status.hooks`` and the session's conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stashflow.addons.errors import StashflowError
from stashflow.addons.hooks import PRE_PHASES, HookPlan, hook_status, should_run
from stashflow.addons.sessions import condition
from stashflow.tasks.hooks import run_hook

#: The condition each phase sets on the BackupSession/RestoreSession (KubeStash's condition types).
CONDITIONS = {"preBackup": "PreBackupHooksExecutionSucceeded", "postBackup": "PostBackupHooksExecutionSucceeded",
              "preRestore": "PreRestoreHooksExecutionSucceeded", "postRestore": "PostRestoreHooksExecutionSucceeded"}


@dataclass
class HookResults:
    """What the hooks of a session did, in order; ``failure`` is the first failed hook's error."""

    ran: list[tuple[HookPlan, str]] = field(default_factory=list)
    failure: StashflowError | None = None

    def status(self) -> dict[str, list[dict[str, str]]]:
        return hook_status(self.ran)

    def conditions(self) -> list[dict[str, str]]:
        """One condition per phase that ran: True when every hook of it succeeded."""
        out = []
        for phase in dict.fromkeys(p.phase for p, _ in self.ran):
            failed = [p.name for p, result in self.ran if p.phase == phase and result == "Failed"]
            out.append(condition(CONDITIONS[phase], not failed,
                                 "HookExecutionFailed" if failed else "HookExecutionSucceeded",
                                 f"hook {', '.join(failed)} failed" if failed else f"{phase} hooks succeeded"))
        return out


async def run_phase(plans: list[HookPlan], results: HookResults, succeeded: bool | None = None
                    ) -> StashflowError | None:
    """Run ``plans`` (one phase) in order; the phase's first failure, or None. A pre phase stops at its
    first failure; a post phase runs each hook its policy allows, whatever the others did."""
    failure: StashflowError | None = None
    for plan in plans:
        if not should_run(plan, succeeded):
            continue
        try:
            await run_hook(plan)
        except StashflowError as exc:
            results.ran.append((plan, "Failed"))
            results.failure = results.failure or exc
            failure = failure or exc
            if plan.phase in PRE_PHASES:
                break
            continue
        results.ran.append((plan, "Succeeded"))
    return failure
