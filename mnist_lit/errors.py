"""The one exception type for user mistakes: printed as a short message, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, files, environment): report it and exit non-zero."""

    exit_code = 2
