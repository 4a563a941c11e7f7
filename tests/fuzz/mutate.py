"""A structure-aware mutator of YAML files: what a hostile-but-fair user would write.

Two levels: on the data (pick a field anywhere in the documents, then swap its type,
delete it, replace it with a long or odd string, a control character, a bad cron, duration,
name or number, nest it deeply) and on the text (anchors and aliases, billion laughs,
recursive aliases, explicit tags with bad values, deep flow nesting, truncation, bytes that
are not UTF-8). Every choice comes from the ``random.Random`` passed in: a seed replays a case.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Callable

import yaml

ODD_STRINGS = [
    "", " ", "  padded  ", "-", ".", "..", "../..", "../../tmp/x", "/abs/path", "a//b", "a/./b", "/", "//",
    "Data_X", "Bad Secret!", "UPPER", "a" * 64, "a" * 254, "x" * 5000, "-leading", "trailing-", "a..b",
    "ünïcödé", "名前", "emoji-😀", "rtl-\u202eevil", "zero\u200bwidth", "line\u2028sep",
    "new\nline", "tab\there", "esc\x1b[31mred", "nul\x00byte", "bell\x07", "del\x7f", "c1\x85next",
    "$(RESTIC_PASSWORD)", "$$", "$(", "trailing$", "${x", "${", "${a:=${b:=c}}", "${#x}", "${x^^}", "${x-d}",
    "${a:=" * 40 + "x" + "}" * 40, "${a:=" * 600 + "x" + "}" * 600, "'quoted'", '"dq"', "back\\slash",
    "key: value", "- item", "&anchor", "*alias", "!!int 3", "%TAG", "{a: b}", "[1, 2]", "#comment", "null", "~",
    "yes", "no", "on", "off", "0x1F", "1e999", "-0", "0o17", "1_000", "2024-01-01", "12:30:00",
]
CONTROLS = ["\x00", "\x1b[2J", "\n", "\r", "\x07", "\u2028"]
BAD_CRONS = [
    "0 0 30 2 *", "61 25 * * *", "* * * *", "* * * * * * * *", "@reboot", "@daily", "0 0 31 4 *",
    "CRON_TZ=Mars/Olympus 0 2 * * *", "TZ= 0 2 * * *", "CRON_TZ=Europe/Berlin", "*/0 * * * *", "1-70 * * * *",
    "0 0 ? * *", "0 0 * * 5L", "H * * * *", "R R R R R", "0 0 1W * *", "", " ", "0 2 * * * ", "L L L L L",
    "0 0 29 2 1", "* * * * 8", "0,,1 * * * *", "0 0 * JAN-FOO *", "CRON_TZ=UTC 0 0 30 2 *",
]
DURATIONS = [
    "soon", "99999999999999999999h", "2562048h", "-5m", "+5m", "0", "0s", "0.1s", "0.0001ns", "١h", "１h", "1h30",
    "1.5.5h", "h", "5", "1d", "1y", "forever", "1h-5m", "1e3s", "inf", "nan", "", " 30m ", "30 m", "1mo", "2562047h",
    "1y2mo3w4d5h6m", "99999999999999999999y", "-1d", "0d", "1x",
]
NAMES = ["Data_X", "Bad Secret!", "a" * 64, "a" * 300, "-a", "a-", "a.b", "a..b", "", "UPPER", "with space",
         "new\nline", "esc\x1b", "nul\x00", "ok-name", "ünï", "a/b", "..", "."]
NUMBERS = [-1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 10**30, -(2**63), 1.5, -0.5, 1e308, float("inf"),
           float("nan"), True, False]
TYPE_SWAPS: list[Any] = [None, 0, -1, 3.14, True, "", "text", [], ["a"], {}, {"a": "b"}, [[["deep"]]],
                         {"nested": {"x": [1, {"y": None}]}}]

#: Field names whose values the mutator targets with the matching list, by name.
BY_FIELD: dict[str, list[Any]] = {
    "schedule": BAD_CRONS,
    "backupTimeout": DURATIONS, "restoreTimeout": DURATIONS, "delay": DURATIONS, "maxRetentionPeriod": DURATIONS,
    "timeout": DURATIONS,
    "name": NAMES, "namespace": NAMES, "directory": ODD_STRINGS, "repository": NAMES, "snapshot": NAMES,
    "maxRetry": NUMBERS, "sessionHistoryLimit": NUMBERS, "last": NUMBERS, "daily": NUMBERS, "weekly": NUMBERS,
    "hourly": NUMBERS, "monthly": NUMBERS, "yearly": NUMBERS, "startingDeadlineSeconds": NUMBERS,
    "activeDeadlineSeconds": NUMBERS, "backoffLimit": NUMBERS,
}

Path_ = tuple[Any, ...]


def paths(data: Any, base: Path_ = ()) -> list[Path_]:
    """Every field path in nested dicts and lists (the root included)."""
    out = [base]
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths(value, base + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths(value, base + (i,))
    return out


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    _get(data, path[:-1])[path[-1]] = value
    return data


def _delete(data: Any, path: Path_) -> Any:
    if not path:
        return None
    parent = _get(data, path[:-1])
    del parent[path[-1]]
    return data


def _nest(value: Any, depth: int, rnd: random.Random) -> Any:
    for _ in range(depth):
        value = [value] if rnd.random() < 0.5 else {"n": value}
    return value


@dataclass
class Mutation:
    """One mutated file: its text (or bytes) and what was done, to name the case."""

    text: str | bytes
    what: str


def mutate_data(docs: list[Any], rnd: random.Random) -> tuple[list[Any], str]:
    """One data-level change somewhere in ``docs`` (a deep copy is changed)."""
    docs = copy.deepcopy(docs)
    index = rnd.randrange(len(docs))
    doc = docs[index]
    candidates = paths(doc)
    path = rnd.choice(candidates)
    # prefer fields the mutator knows how to break, half of the time
    known = [p for p in candidates if p and isinstance(p[-1], str) and p[-1] in BY_FIELD]
    if known and rnd.random() < 0.5:
        path = rnd.choice(known)
    field = path[-1] if path and isinstance(path[-1], str) else None
    ops: list[tuple[str, Callable[[], Any]]] = [
        ("type-swap", lambda: _set(doc, path, rnd.choice(TYPE_SWAPS))),
        ("delete", lambda: _delete(doc, path)),
        ("odd-string", lambda: _set(doc, path, rnd.choice(ODD_STRINGS))),
        ("number", lambda: _set(doc, path, rnd.choice(NUMBERS))),
        ("deep", lambda: _set(doc, path, _nest(_get(doc, path), rnd.choice([20, 90, 150, 400]), rnd))),
        ("control", lambda: _set(doc, path, str(_get(doc, path)) + rnd.choice(CONTROLS))),
    ]
    if field in BY_FIELD:
        ops += [("by-field", lambda: _set(doc, path, rnd.choice(BY_FIELD[field])))] * 3
    if isinstance(_get(doc, path), list) and _get(doc, path):
        ops.append(("duplicate-item", lambda: (_get(doc, path).append(_get(doc, path)[0]), doc)[1]))
    if isinstance(_get(doc, path), dict):
        ops.append(("extra-key", lambda: (_get(doc, path).update({rnd.choice(["unknown", "spec", "name", "x" * 300]):
                                                                    rnd.choice(TYPE_SWAPS + ODD_STRINGS[:20])}), doc)[1]))
    name, op = rnd.choice(ops)
    docs[index] = op()
    return docs, f"{name} at doc {index} {'.'.join(map(str, path))[:80]}"


def laughs(levels: int = 9) -> str:
    """The billion laughs: 9 levels of 9 aliases each (605 bytes, 10^9 strings when expanded)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def mutate_text(text: str, rnd: random.Random) -> Mutation:
    """One text-level change: what only YAML's syntax can express."""
    lines = text.splitlines()
    value_lines = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]
    i = rnd.choice(value_lines) if value_lines else 0

    def replace_value(new: str) -> str:
        key = lines[i].split(": ", 1)[0]
        return "\n".join(lines[:i] + [f"{key}: {new}"] + lines[i + 1:]) + "\n"

    choice = rnd.randrange(14)
    if choice == 0:
        return Mutation(replace_value(rnd.choice(["!!int x", "!!bool x", "!!float job", "!!binary ###", "!!timestamp x",
                                                  "!!python/object:os.system x", "!!set {a}", "!!omap [a]", "!!int 99999999999999999999",
                                                  "!!float 1e99999", "!!null x", "!!str [1]", "!!map x", "!!seq x", "!custom x"])),
                        "bad-tag")
    if choice == 1:
        return Mutation(replace_value("*nowhere"), "undefined-alias")
    if choice == 2:
        return Mutation(text + "---\n" + laughs(), "billion-laughs")
    if choice == 3:
        return Mutation(replace_value("&a {backupTasks: [*a]}"), "recursive-alias")
    if choice == 4:
        depth = rnd.choice([99, 101, 500, 999, 5000])
        return Mutation(replace_value("[" * depth + "]" * depth), f"deep-flow-{depth}")
    if choice == 5:
        depth = rnd.choice([150, 700])
        return Mutation(replace_value("{a: " * depth + "1" + "}" * depth), f"deep-map-{depth}")
    if choice == 6:
        cut = rnd.randrange(len(text) + 1)
        return Mutation(text[:cut], f"truncated-at-{cut}")
    if choice == 7:
        raw = bytearray(text.encode())
        for _ in range(rnd.randint(1, 4)):
            raw[rnd.randrange(len(raw))] = rnd.choice([0x00, 0x1B, 0xFF, 0xC3, 0x80, 0x0A, 0x22, 0x5B])
        return Mutation(bytes(raw), "byte-flip")
    if choice == 8:
        return Mutation("\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:]) + "\n", "duplicate-key")
    if choice == 9:
        return Mutation(replace_value("&x " + lines[i].split(": ", 1)[1]) + "extra: *x\nother: &x 1\n", "duplicate-anchor")
    if choice == 10:
        return Mutation(text + "\n" * rnd.choice([1, 5]) + rnd.choice(["key: [unclosed", '"open', "- - -", "\t: tab", "? ? ?"]),
                        "broken-tail")
    if choice == 11:
        return Mutation(replace_value('"' + rnd.choice(["\\x1b[31m", "\\0", "\\u2028", "\\e", "\\x85"]) + '"'), "escaped-control")
    if choice == 12:
        return Mutation(text.replace("\n", "\r\n") if rnd.random() < 0.5 else "\ufeff" + text, "crlf-or-bom")
    anchor_line = rnd.choice(value_lines) if value_lines else 0
    key = lines[anchor_line].split(": ", 1)[0] if value_lines else "k"
    merged = text + f"---\nbase: &b {{x: 1, y: [1, 2]}}\nuse:\n  <<: [*b, *b]\n  {key.strip()}: *b\n"
    return Mutation(merged, "merge-keys")


def mutate(text: str, rnd: random.Random) -> Mutation:
    """A text- or data-level mutation of a YAML file, about half each."""
    if rnd.random() < 0.55:
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError:
            docs = []
        if docs:
            changed, what = mutate_data(docs, rnd)
            try:
                return Mutation(yaml.safe_dump_all(changed, sort_keys=False, allow_unicode=True, width=200), what)
            except (RecursionError, ValueError, yaml.YAMLError):
                pass  # a structure PyYAML cannot write: fall back to a text mutation
    return mutate_text(text, rnd)
