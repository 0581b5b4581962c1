"""Errors of the reference loader (torch-free so that callers can catch them cheaply)."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file, a key, or holds a wrong shape or a bad config."""
