"""Errors a user can act on. The CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (config, path, file contents). The message names the problem."""


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """Activation data is missing, corrupt or non-finite."""


def first_line(error: BaseException) -> str:
    """A third-party exception's message cut to one line, for wrapping in a UserError."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
