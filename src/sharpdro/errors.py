"""User-facing errors: each says what is wrong and what to do. The CLI prints them in one line."""


class SharpDROError(Exception):
    """Base of every error a user can fix (bad input, missing data, bad config)."""


class DataError(SharpDROError):
    """Missing or malformed dataset files, wrong checksum, unknown layout."""


class CacheError(SharpDROError):
    """A cache entry failed verification."""


class TrainingError(SharpDROError):
    """Training cannot go on (non-finite loss, config that cannot work)."""


class ConfigError(SharpDROError, ValueError):
    """A config key, type or value is not allowed. The message says which and what is."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite; the engine adds what the run directory holds and what to do."""


class SelectionError(SharpDROError):
    """A model-selection rule cannot be applied to a run's records (test-set oracle without per-epoch test)."""
