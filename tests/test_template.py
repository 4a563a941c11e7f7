"""The ${...} rules of REFERENCE.md §3.2, row by row, and values that must come out verbatim."""

from __future__ import annotations

import pytest

from stashflow.addons.template import MissingValue, TemplateSyntaxError, names, parse, substitute

ABSENT: dict[str, str] = {}
EMPTY = {"x": ""}
PRESENT = {"x": "v"}


@pytest.mark.parametrize(
    "text, absent, empty, present",
    [
        ("${x}", MissingValue, "", "v"),
        ("${x:=d}", "d", "", "v"),
        ("${x:-d}", "d", "", "v"),
        ("${x=d}", "d", "", "v"),
        ("${x:=}", "", "", "v"),
        ("${x:+d}", MissingValue, "d", "v"),
        ("${x:?d}", MissingValue, "d", "v"),
        ("pre-${x:=1}-post", "pre-1-post", "pre--post", "pre-v-post"),
        ("${x:=${y:=z}}", "z", "", "v"),
        ("${x^^}", MissingValue, "", "V"),
        ("${#x}", MissingValue, "0", "1"),
    ],
)
def test_reference_table(text: str, absent: object, empty: str, present: str) -> None:
    for inputs, expected in ((ABSENT, absent), (EMPTY, empty), (PRESENT, present)):
        if expected is MissingValue:
            with pytest.raises(MissingValue) as info:
                substitute(text, inputs)
            assert info.value.name == "x"
        else:
            assert substitute(text, inputs) == expected, (text, inputs)


def test_case_operators() -> None:
    inputs = {"x": "hello World"}
    assert substitute("${x,,}|${x^^}|${x^}|${x,}", inputs) == "hello world|HELLO WORLD|Hello World|hello World"


@pytest.mark.parametrize("text", ["${x-d}", "${x+d}", "${x", "${x:=d", "${}", "${#x:=d}", "${x/a/b}"])
def test_unsupported_or_broken_expressions_are_syntax_errors(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse(text)


def test_dollar_rules() -> None:
    assert substitute("$$", {}) == "$"
    assert substitute("$${x}", {"x": "v"}) == "${x}"
    assert substitute("a$$b", {}) == "a$b"
    assert substitute("$x and $(x) stay", {"x": "v"}) == "$x and $(x) stay"
    assert substitute("cost: 5$", {}) == "cost: 5$"
    # Kubernetes' $$(VAR) escape collapses to $(VAR), as KubeStash does (REFERENCE §3.2)
    assert substitute("$$(HOME)", {}) == "$(HOME)"


def test_default_runs_to_first_closing_brace() -> None:
    assert substitute("${x:=a}b}", {}) == "ab}"
    assert substitute("${x:=a/b:c d}", {}) == "a/b:c d"
    assert substitute('${copyOnly:="true"}', {}) == '"true"'


@pytest.mark.parametrize(
    "value",
    ['quote " inside', "back\\slash", "dollar $ alone", "${x}", "$${y}", "line one\nline two", "tab\tend", "ünïcode ✓",
     "}{", "'single'"],
)
def test_values_come_out_verbatim_and_are_not_substituted_again(value: str) -> None:
    inputs = {"p": value, "x": "SHOULD-NOT-APPEAR", "y": "NOR-THIS"}
    assert substitute("--arg=${p:=}", inputs) == "--arg=" + value
    assert substitute("${p}", inputs) == value
    # a default that refers to another value inserts that value verbatim too
    assert substitute("${missing:=${p}}", inputs) == value


def test_names_include_nested_defaults() -> None:
    assert sorted(names(parse("a ${x:=${y:=${z}}} ${w,,} $${not}"))) == ["w", "x", "y", "z"]
