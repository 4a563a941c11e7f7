"""Field types with the API server's ranges, and durations checked when a plan is read.

A count below zero or past int32, or a duration Kubernetes cannot read, would only fail once a
scheduled run reaches the cluster; here it fails at ``validate`` with its file and line."""

from __future__ import annotations

from typing import Annotated, Callable

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ..durations import deadline_seconds, parse_duration, parse_retention_period
from ..names import name_problem

INT32 = 2**31 - 1
INT64 = 2**63 - 1

#: A count the API holds as int32 and that cannot be negative (maxRetry, history limits, keep rules).
Count = Annotated[int, Field(ge=0, le=INT32)]
#: Seconds the API holds as int64, never negative (startingDeadlineSeconds...).
Seconds = Annotated[int, Field(ge=0, le=INT64)]


def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """A validator that keeps the text as written when ``parse`` reads it, else a pydantic error
    carrying ``parse``'s reason."""
    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise PydanticCustomError("invalid_duration", str(exc)) from None
        return value
    return check


def _name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise PydanticCustomError("invalid_name", problem)
    return value


def _none_if_blank(value: object) -> object:
    return None if value == "" else value


#: A metav1.Duration: ``30s``, ``1h30m``; not negative, not past Go's limit.
Duration = Annotated[str, AfterValidator(_checked(parse_duration))]
#: A deadline (backupTimeout, restoreTimeout): a Duration above zero; fractions round up to whole seconds.
Deadline = Annotated[str, AfterValidator(_checked(deadline_seconds))]
#: A RetentionPeriod: ``30d``, ``1y2mo``.
RetentionPeriod = Annotated[str, AfterValidator(_checked(parse_retention_period))]
#: An object name Kubernetes accepts (DNS-1123 subdomain, at most 253 characters).
ObjectName = Annotated[str, AfterValidator(_name)]
#: In a form, an empty field means "not given".
Blank = BeforeValidator(_none_if_blank)
