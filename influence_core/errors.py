"""The one error type a user sees: bad settings or inputs, reported as one line with exit code 2."""


class ConfigError(ValueError):
    """Bad input: a setting, a prompts file, a corpus, or a missing upstream artifact."""

    exit_code = 2
