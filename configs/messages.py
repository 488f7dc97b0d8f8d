"""One-line messages from exceptions, shared by the config errors and the training errors."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), without a
    closing period: wrapped exceptions (Hydra's, torch's, OSError) fit into one line of ours."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__
