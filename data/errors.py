"""The one exception type for problems a user can fix (a bad flag, a missing or malformed file)."""


class DataError(ValueError):
    """A user-caused data problem; the message names the flag or file and says how to fix it."""
