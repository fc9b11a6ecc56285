"""The one error type users see: its message says what went wrong and what to do."""


class HypersrError(Exception):
    """A problem with the user's input or set-up; printed as one line, never as a traceback."""
