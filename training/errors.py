"""The error a run stops with when it cannot start or go on: one line that says what to do."""


class RunError(ValueError):
    """A run cannot start or go on; the message says what to do."""
