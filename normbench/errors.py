"""The one exception type for bad input.

Everything a user can get wrong (a name, an option, a shape, a device) raises ``UsageError`` with a
message that says what was wrong and how to fix it. The Hydra apps print that message as one line and
let the rest of a sweep go on; any other exception is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input from the user: the message says what was wrong and how to fix it."""


class Unsupported(UsageError):
    """A valid combination that this implementation cannot run (e.g. EvoNorm has no `native`): a sweep
    records the job as skipped, with this message as the reason, and does not count it as failed."""
