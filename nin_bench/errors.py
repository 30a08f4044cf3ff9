"""The one base class of user-facing errors (bad config, missing data): the CLI prints them and exits 2.

Kept free of torch so the CLI can catch it for every command, the torch-less `report` included.
"""


class UserError(ValueError):
    """An error in what the user gave (a config key, a path, a data set): one clear line, no traceback."""


class ConfigError(UserError):
    """A user-facing configuration error (one line: key path, value, what is allowed)."""
