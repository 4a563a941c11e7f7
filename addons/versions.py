"""Choosing the Function image version for a database version (``${DB_VERSION}``, REFERENCE.md §3.5).

Same algorithm as KubeStash's ``FindAppropriateAddonVersion``: an exact entry wins; otherwise
only entries with the database's major version count, and the closest entry at or below the
database version is taken, else the closest above it."""

from __future__ import annotations

import re

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _parse(version: str) -> tuple[int, int, int] | None:
    """Major, minor, patch of the first version number in ``version`` (``v16.4-ubi`` → 16, 4, 0)."""
    match = _VERSION.search(version)
    if not match:
        return None
    return tuple(int(g) if g else 0 for g in match.groups())  # type: ignore[return-value]


def find_addon_version(available: list[str], db_version: str) -> str:
    """The entry of ``available`` to use for ``db_version``; ``ValueError`` says why none fits."""
    if not available:
        raise ValueError("the Function lists no availableVersions")
    if db_version in available:
        return db_version
    wanted = _parse(db_version)
    if wanted is None:
        raise ValueError(f'"{db_version}" holds no version number')
    candidates: list[tuple[int, int, int, str]] = []
    for entry in available:
        parsed = _parse(entry)
        if parsed is None:
            raise ValueError(f'availableVersions entry "{entry}" holds no version number')
        if parsed[0] == wanted[0]:
            candidates.append((parsed[1], parsed[2], 0, entry))
    if not candidates:
        raise ValueError(f"no available version has major version {wanted[0]} (available: {', '.join(available)})")
    ordered = sorted(candidates + [(wanted[1], wanted[2], 1, "")])
    i = next(i for i, c in enumerate(ordered) if c[2] == 1)
    return ordered[i - 1][3] if i > 0 else ordered[i + 1][3]
