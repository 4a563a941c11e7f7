"""Values are data after Kubernetes too: the kubelet expands ``$(VAR)`` and ``$$`` in a container's
command, args and env values, so every value stashflow substitutes there is escaped, and the
program receives it byte for byte; the Function's own ``$(VAR)`` references keep working.

The reference for "what the program receives" is ``localkube.expansion.expand``, a port of
Kubernetes' ``third_party/forked/golang/expansion``; the real-run test in tests/runs checks the
same through the node agent."""

from __future__ import annotations

import random

import pytest

from localkube.expansion import expand
from stashflow.addons.template import kube_escape, kube_literal, parse, evaluate

ENV = {"RESTIC_PASSWORD": "s3cret", "HOME_DIR": "/h", "A": "a"}
ALPHABET = ["$", "$", "(", ")", "A", "_", "RESTIC_PASSWORD", "$(", "$$", "x", "{", "}", " ", "é", "\n"]


def values(count: int = 3000) -> list[str]:
    rng = random.Random(20261128)
    found = ["", "$", "$$", "$(", "$(RESTIC_PASSWORD)", "$$(RESTIC_PASSWORD)", "a$", "(RESTIC_PASSWORD)",
             ")", "$(A", "$(HOME_DIR)$(A)$$"]
    found += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 10))) for _ in range(count)]
    return found


def received(template: str, inputs: dict[str, str]) -> str:
    return expand(evaluate(parse(template), inputs, kube=True), ENV)


@pytest.mark.parametrize("template, expected", [
    ("${v}", "<V>"),
    ("--paths=${v}", "--paths=<V>"),
    ("$(HOME_DIR)/${v}", "/h/<V>"),  # the Function's own reference still expands
    ("x$${v}", "x${v}"),  # $$ in the Function is its own text: a literal "${v}"
    ("x$${v:=d}", "x${v:=d}"),
    ("pre$", "pre$"),
    ("pre$${v}", "pre${v}"),
    ("pre$ ${v}", "pre$ <V>"),
    ("${x:=a$}${v}", "a$<V>"),  # a trailing "$" (of a default) before a value stays text
    ("$(|${v}", "$(<V>"),  # an unclosed "$(" that a value would close stays text
    ("${v}$(A)", "<V>a"),
    ("${v}${v}", "<V><V>"),
])
def test_every_value_reaches_the_program_byte_for_byte(template: str, expected: str) -> None:
    template = template.replace("|", "")
    for value in values():
        got = received(template, {"v": value})
        assert got == expected.replace("<V>", value), (template, value, got)


def test_a_function_default_is_function_text_a_given_value_is_data() -> None:
    assert received("${v:=$(HOME_DIR)}", {}) == "/h"
    assert received("${v:=$(HOME_DIR)}", {"v": "$(HOME_DIR)"}) == "$(HOME_DIR)"
    assert received("${v,,}", {"v": "$(A)"}) == "$(a)"  # case operators apply to the value, still data
    assert received("${#v}", {"v": "$$"}) == "2"


def test_escaping_is_reversible_and_literals_keep_their_meaning() -> None:
    for value in values(500):
        assert expand(kube_escape(value), ENV) == value
        # a literal means the same to Kubernetes alone and sealed
        assert expand(kube_literal(value), ENV) == expand(value, ENV)


def test_no_value_can_pull_a_secret_in() -> None:
    for value in values():
        for template in ("${v}", "--x=${v}", "$${v}", "a$(${v}"):
            assert "s3cret" not in received(template, {"v": value}) or "s3cret" in value
