"""Errors that reach the user as one line and exit code 2."""


class UserError(Exception):
    """Bad input the user can fix; the CLI prints the message (which names the fix) and exits with 2."""
