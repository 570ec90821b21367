"""Errors a user can fix, at the bottom of the package so that every layer can raise them."""


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the problem and the fix."""
