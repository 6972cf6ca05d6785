"""Errors a user can act on. The CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (config, path, file contents). The message names the problem."""


class ConfigError(UserError):
    """A config file or override is invalid."""


class DataError(UserError):
    """Activation data is missing, corrupt or non-finite."""
