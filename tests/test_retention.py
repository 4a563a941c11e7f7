"""Retention as a pure function, on synthetic timelines; restic's own `forget` is the oracle."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from stashflow.addons.model import RetentionPolicy
from stashflow.addons.retention import Item, apply, keep_rules

T0 = datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc)  # a Thursday; ISO week 53 of 2026


def policy(**spec) -> RetentionPolicy:  # type: ignore[no-untyped-def]
    return RetentionPolicy.model_validate({"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "RetentionPolicy",
                                           "metadata": {"name": "p"}, "spec": spec})


def items(hours: list[float], phase: str = "Succeeded") -> list[Item]:
    return [Item(f"{phase[0].lower()}{i}", phase, T0 - timedelta(hours=h)) for i, h in enumerate(hours)]


def test_last_keeps_the_newest() -> None:
    snaps = items([0, 1, 2, 3])
    decision = apply(policy(successfulSnapshots={"last": 2}), snaps, T0)
    assert decision.keep == ["s0", "s1"] and decision.delete == ["s2", "s3"]
    assert decision.reasons["s3"] == ["no rule keeps it"]


def test_daily_keeps_newest_per_day_for_n_days() -> None:
    snaps = items([0, 5, 24, 30, 48, 72])  # days: 31st, 31st, 30th, 30th(?), 29th, 28th
    kept = keep_rules(snaps, daily=3)
    assert sorted(kept) == ["s0", "s2", "s4"]


def test_weekly_uses_iso_weeks_across_the_year_end() -> None:
    # 2026-12-31 is in ISO week 2026-W53; 2027-01-03 too (Sunday); 2027-01-04 starts 2027-W01
    t = [T0 + timedelta(days=4), T0 + timedelta(days=3), T0, T0 - timedelta(days=7)]
    snaps = [Item(f"w{i}", "Succeeded", x) for i, x in enumerate(t)]
    assert sorted(keep_rules(snaps, weekly=3)) == ["w0", "w1", "w3"]


def test_rules_combine_as_a_union() -> None:
    snaps = items([0, 1, 25, 49, 24 * 40])
    kept = keep_rules(snaps, last=1, daily=2, monthly=2)
    assert sorted(kept) == ["s0", "s2", "s4"]  # last: s0; daily: s0, s2; monthly: s0 (Dec), s4 (Nov)
    assert kept["s0"] == ["last 1", "daily 2", "monthly 2"]


def test_failed_snapshots_default_to_keeping_one() -> None:
    snaps = items([0, 1]) + items([0.5, 2, 3], phase="Failed")
    decision = apply(policy(successfulSnapshots={"last": 5}), snaps, T0)
    assert sorted(decision.delete) == ["f1", "f2"]
    decision = apply(policy(successfulSnapshots={"last": 5}, failedSnapshots={"last": 0}), snaps, T0)
    assert sorted(decision.delete) == ["f0", "f1", "f2"]


def test_max_retention_period_removes_even_what_a_rule_keeps() -> None:
    snaps = items([0, 24 * 10, 24 * 40])
    decision = apply(policy(successfulSnapshots={"last": 10}, maxRetentionPeriod="30d"), snaps, T0)
    assert decision.delete == ["s2"] and decision.reasons["s2"] == ["older than maxRetentionPeriod 30d"]
    decision = apply(policy(maxRetentionPeriod="1w2d"), snaps, T0)
    assert decision.keep == ["s0"]


def test_pending_and_running_are_never_touched() -> None:
    snaps = items([0]) + items([24 * 400], phase="Running") + items([24 * 400], phase="Pending")
    decision = apply(policy(successfulSnapshots={"last": 1}, maxRetentionPeriod="1d"), snaps, T0)
    assert sorted(decision.keep) == ["p0", "r0", "s0"] and decision.delete == []


# -- restic as the oracle ---------------------------------------------------------------------

TIMELINE_HOURS = sorted({0, 1, 2, 5, 9, 23, 24, 26, 47, 50, 71, 100, 150, 170, 200, 24 * 9, 24 * 13, 24 * 16,
                         24 * 20, 24 * 31, 24 * 33, 24 * 45, 24 * 62, 24 * 95, 24 * 200, 24 * 380, 24 * 400,
                         24 * 800})

POLICIES = [
    {"last": 3},
    {"hourly": 5},
    {"daily": 4},
    {"weekly": 3},
    {"monthly": 4},
    {"yearly": 3},
    {"last": 2, "daily": 3, "weekly": 2},
    {"hourly": 3, "monthly": 2, "yearly": 2},
    {"last": 1, "hourly": 2, "daily": 2, "weekly": 2, "monthly": 2, "yearly": 2},
]


@pytest.fixture(scope="module")
def restic_timeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A real restic repository with one snapshot per timeline point; id → our name."""
    from localkube.helpers import apt_install

    apt_install("restic")
    root = tmp_path_factory.mktemp("restic")
    repo, data = root / "repo", root / "data"
    data.mkdir()
    (data / "f").write_text("x")
    env = {**os.environ, "RESTIC_PASSWORD": "pw", "RESTIC_REPOSITORY": str(repo), "TZ": "UTC"}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    for i, hours in enumerate(TIMELINE_HOURS):
        when = (T0 - timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")
        subprocess.run(["restic", "backup", "--host", "h", "--time", when, "--tag", f"n{i}", str(data)], env=env,
                       check=True, capture_output=True)
    listed = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env, check=True, capture_output=True,
                                       text=True).stdout)
    return repo, {s["id"]: s["tags"][0] for s in listed}


@pytest.mark.parametrize("rules", POLICIES, ids=[",".join(f"{k}={v}" for k, v in p.items()) for p in POLICIES])
def test_same_choice_as_restic_forget(restic_timeline: tuple[Path, dict[str, str]], rules: dict[str, int]) -> None:
    repo, names = restic_timeline
    args = [f"--keep-{k}={v}" for k, v in rules.items()]
    env = {**os.environ, "RESTIC_PASSWORD": "pw", "RESTIC_REPOSITORY": str(repo), "TZ": "UTC"}
    out = subprocess.run(["restic", "forget", "--dry-run", "--json", *args], env=env, check=True,
                         capture_output=True, text=True).stdout
    (group,) = json.loads(out)
    restic_keeps = sorted(names[s["id"]] for s in group["keep"])
    ours = [Item(f"n{i}", "Succeeded", T0 - timedelta(hours=h)) for i, h in enumerate(TIMELINE_HOURS)]
    decision = apply(policy(successfulSnapshots=rules), ours, T0)
    assert sorted(decision.keep) == restic_keeps
