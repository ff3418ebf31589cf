"""The project's error base class: the CLI turns any ``NifiError`` into a one-line message and exit code 2."""


class NifiError(Exception):
    """Base of every user-facing error (bad file, bad config, missing weights...)."""
