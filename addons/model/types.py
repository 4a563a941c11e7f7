"""Field types with the API server's ranges, and durations checked when a plan is read.

A count below zero or past int32, or a duration Kubernetes cannot read, would only fail once a
scheduled run reaches the cluster; here it fails at ``validate`` with its file and line."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from ..durations import deadline_seconds, parse_duration, parse_retention_period

INT32 = 2**31 - 1
INT64 = 2**63 - 1

#: A count the API holds as int32 and that cannot be negative (maxRetry, history limits, keep rules).
Count = Annotated[int, Field(ge=0, le=INT32)]
#: Seconds the API holds as int64, never negative (startingDeadlineSeconds...).
Seconds = Annotated[int, Field(ge=0, le=INT64)]


def _duration(value: str) -> str:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_duration", str(exc)) from None
    return value


def _deadline(value: str) -> str:
    try:
        deadline_seconds(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_duration", str(exc)) from None
    return value


def _retention(value: str) -> str:
    try:
        parse_retention_period(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_duration", str(exc)) from None
    return value


#: A metav1.Duration: ``30s``, ``1h30m``; not negative, not past Go's limit.
Duration = Annotated[str, AfterValidator(_duration)]
#: A deadline (backupTimeout, restoreTimeout): a Duration above zero; fractions round up to whole seconds.
Deadline = Annotated[str, AfterValidator(_deadline)]
#: A RetentionPeriod: ``30d``, ``1y2mo``.
RetentionPeriod = Annotated[str, AfterValidator(_retention)]
