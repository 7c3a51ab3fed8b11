"""Errors that reach the user as one line and a documented exit code.

Anything raised as a `VcompError` is a problem the user can fix; the CLI prints its message
(no traceback unless --debug) and exits with `exit_code`. Any other exception is a bug (exit 1).
"""


class VcompError(Exception):
    """Base class: a one-line, user-facing message that says how to fix the problem."""

    exit_code = 1


class InputError(VcompError):
    """Bad input or usage: missing/unreadable file, bad option value, unwritable output."""

    exit_code = 2


class WeightsError(VcompError):
    """Missing, corrupt, tampered or mismatched model weights."""

    exit_code = 3


class BatchError(VcompError):
    """Some jobs of a batch failed (the others completed)."""

    exit_code = 4
