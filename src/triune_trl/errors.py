"""Exceptions that carry enough context for a user to fix their input without reading a traceback."""


class TriuneError(Exception):
    """Base class for every error this package raises on purpose."""


class DataError(TriuneError):
    """A data file, row or field is unusable. The message names file, row and field and says what to do."""


class RewardSpecError(TriuneError):
    """A `reward_model` struct cannot be scored: `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InputLineError(TriuneError):
    """A line of a JSONL input file is malformed; `line` is 1-based."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class UsageError(TriuneError):
    """A command-line option, recipe key or launch setting is wrong; the message names it and says what to pass."""
