"""Kubernetes' ``$(VAR)`` expansion, as the kubelet applies it to a container's command, args and
env values: the node agent uses it, and tests use it as the reference when they check that a value
reaches the program byte for byte."""

from __future__ import annotations

from typing import Mapping


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values, ported byte for byte from
    ``third_party/forked/golang/expansion/expand.go``: ``$$`` → ``$``, ``$(NAME)`` → its value when
    defined (else kept as written), an unclosed ``$(`` and a trailing ``$`` kept as text."""
    out: list[str] = []
    checkpoint, cursor, n = 0, 0, len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:  # incomplete reference: "$(" as text, scanning goes on after it
                    out.append("$(")
                    cursor += 1
                else:
                    name = text[cursor + 2:close]
                    out.append(env[name] if name in env else f"$({name})")
                    cursor = close
            else:  # "$$" is an escaped "$"; "$x" is text
                out.append("$" if nxt == "$" else "$" + nxt)
                cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)
