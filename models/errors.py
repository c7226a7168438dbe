"""User-facing errors: the CLI prints them as one line and the server maps them to 4xx."""


class SRError(Exception):
    """Base of every error caused by the user's input (files, names, parameters)."""
