"""An independent model of KubeStash's own resolver, used as the oracle in tests.

KubeStash (apimachinery ``ResolveWithInputs``) serialises the object to JSON, runs
gomodules.xyz/envsubst over the JSON *text* and parses the result back (REFERENCE.md §3.1).
This re-creates that pipeline with a regex over JSON text: a different mechanism from
stashflow's structure walk, so agreement between the two on the whole upstream catalog is
evidence, not a tautology. It covers what the catalog uses: ``$$``, ``${x}`` and the default
operators with a flat default.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

_EXPR = re.compile(r"\$\$|\$\{([A-Za-z0-9_]+)(?:(:=|:-|=)([^}]*))?\}")


class OracleError(Exception):
    pass


def envsubst_text(text: str, inputs: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group(1), match.group(2), match.group(3)
        if name in inputs:
            return inputs[name]  # inserted into JSON text without escaping, as Go does
        if op:
            return default
        raise OracleError(f"input/default value not found for key {name}")

    return _EXPR.sub(repl, text)


def resolve_with_inputs(obj: Any, inputs: Mapping[str, str]) -> Any:
    """json.Marshal → envsubst over the text → json.Unmarshal."""
    return json.loads(envsubst_text(json.dumps(obj), inputs))
