"""The exception samtune raises for problems a user can fix (bad file, bad argument, no network).

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class SamtuneError(Exception):
    """A user-fixable problem; the message names the file or value and the fix."""


class CheckpointError(SamtuneError):
    """A checkpoint cannot be found, downloaded, verified or loaded."""


class NonFiniteError(SamtuneError):
    """Training produced a NaN or infinite loss or gradient (it diverged)."""


class SamtuneWarning(UserWarning):
    """Something the user should know that does not stop the job (the CLI prints one
    ``warning:`` line)."""
