"""The errors a user sees as one line and an exit code, without a traceback."""


class ConfigError(ValueError):
    """Bad input: a setting, a prompts file, a corpus, or a missing or damaged upstream artifact."""

    exit_code = 2


class StorageError(RuntimeError):
    """The object store failed: unreachable (exit 3, worth a retry) or misconfigured (exit 2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
