"""How error messages show the values and the driver messages they echo."""

from __future__ import annotations

#: How many characters of a value an error message shows.
SHOWN_CHARS = 100


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to about :data:`SHOWN_CHARS` characters."""
    try:
        return cut(repr(value))
    except ValueError:  # an int too long for str(): Python refuses to convert it
        return f"an int of {value.bit_length()} bits" if isinstance(value, int) else "a value"


def cut(text: str) -> str:
    """``text`` cut to about :data:`SHOWN_CHARS` characters, saying how long it was."""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 1]}… ({len(text)} characters)"


def one_line(text: str) -> str:
    """A driver's multi-line message as one line of sentences, runs of spaces collapsed."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return ". ".join(line.rstrip(".") for line in lines if line) or text
