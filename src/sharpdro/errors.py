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


# ------------------------------------------------------------------ bounded messages
def shown(value, limit: int = 80) -> str:
    """``repr(value)`` for a message, bounded whatever the value holds (a giant string, a nested list)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 8
    r.maxlevel = 3
    return cut(r.repr(value), 2 * limit)


def cut(text: str, limit: int = 200) -> str:
    """``text`` whole when short, else its head and tail and how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(1, limit // 2 - 20)
    return f"{text[:keep]}...({len(text) - 2 * keep} characters)...{text[-keep:]}"
