"""The error a run stops with when it cannot start or go on: one line that says what to do."""


class RunError(ValueError):
    """A run cannot start or go on; the message says what to do."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), without a
    closing period: wrapped exceptions (Hydra's, torch's, OSError) fit into one line of ours."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__
