"""The errors a user can fix, in one home, so every layer raises (and every caller catches) the same types.

Each message starts with where to look: a config key (`config.mesh.data=3: ...`), a data file and line
(`train.jsonl:7: ...`) or a checkpoint file (`.../config.json: ...`).
"""


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the config key."""


class DataError(ValueError):
    """A malformed input row; the message starts with `file:line:`."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the reason."""
