"""Which Snapshots a RetentionPolicy keeps: a pure function, the same semantics as restic's
``forget --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly``.

- ``successfulSnapshots``: over Succeeded Snapshots, newest first. ``last: n`` keeps the n
  newest; each bucket rule keeps the newest Snapshot of each of the n most recent distinct
  hours / days / ISO weeks / months / years that have one. A Snapshot is kept if any rule
  keeps it. Without ``successfulSnapshots`` every Succeeded Snapshot is kept by it.
- ``failedSnapshots.last`` (default 1): the n newest Failed Snapshots are kept.
- ``maxRetentionPeriod``: anything older than now − period goes, whatever kept it above.
- Pending and Running Snapshots are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from .durations import parse_retention_period
from .model import RetentionPolicy

BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclass(frozen=True)
class Item:
    """What retention needs of a Snapshot: its name, phase and time."""

    name: str
    phase: str
    time: datetime


@dataclass
class Decision:
    keep: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # name -> why it is kept / deleted


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as KubeStash writes it (``2025-04-22T05:55:00Z``), timezone-aware."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def keep_rules(items: list[Item], *, last: int | None = None, hourly: int | None = None, daily: int | None = None,
               weekly: int | None = None, monthly: int | None = None, yearly: int | None = None
               ) -> dict[str, list[str]]:
    """restic's keep rules over ``items`` (any order): name → the rules that keep it."""
    ordered = sorted(items, key=lambda i: i.time, reverse=True)
    kept: dict[str, list[str]] = {}
    if last:
        for item in ordered[:last]:
            kept.setdefault(item.name, []).append(f"last {last}")
    for rule, count in (("hourly", hourly), ("daily", daily), ("weekly", weekly), ("monthly", monthly),
                        ("yearly", yearly)):
        if not count:
            continue
        seen: set[tuple[int, ...]] = set()
        for item in ordered:
            bucket = BUCKETS[rule](item.time.astimezone(timezone.utc))
            if bucket in seen:
                continue
            seen.add(bucket)
            kept.setdefault(item.name, []).append(f"{rule} {count}")
            if len(seen) == count:
                break
    return kept


def apply(policy: RetentionPolicy, items: Iterable[Item], now: datetime) -> Decision:
    """Split ``items`` into kept and deleted Snapshots, with the reason for each."""
    spec = policy.spec
    items = list(items)
    decision = Decision()
    succeeded = [i for i in items if i.phase == "Succeeded"]
    failed = [i for i in items if i.phase == "Failed"]
    rules = spec.successful_snapshots
    if rules is not None:
        kept = keep_rules(succeeded, last=rules.last, hourly=rules.hourly, daily=rules.daily, weekly=rules.weekly,
                          monthly=rules.monthly, yearly=rules.yearly)
    else:
        kept = {i.name: ["no successfulSnapshots rule"] for i in succeeded}
    failed_last = spec.failed_snapshots.last if spec.failed_snapshots and spec.failed_snapshots.last is not None \
        else 1
    for item in sorted(failed, key=lambda i: i.time, reverse=True)[:failed_last]:
        kept.setdefault(item.name, []).append(f"failed last {failed_last}")
    cutoff = now.timestamp() - parse_retention_period(spec.max_retention_period) if spec.max_retention_period else None
    for item in sorted(items, key=lambda i: i.time, reverse=True):
        if item.phase not in ("Succeeded", "Failed"):
            decision.keep.append(item.name)
            decision.reasons[item.name] = [f"{item.phase or 'unfinished'}: never touched"]
        elif cutoff is not None and item.time.timestamp() < cutoff:
            decision.delete.append(item.name)
            decision.reasons[item.name] = [f"older than maxRetentionPeriod {spec.max_retention_period}"]
        elif item.name in kept:
            decision.keep.append(item.name)
            decision.reasons[item.name] = kept[item.name]
        else:
            decision.delete.append(item.name)
            decision.reasons[item.name] = ["no rule keeps it"]
    return decision
