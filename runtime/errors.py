"""The runtime's documented exception types (all raised before any native call can crash)."""


class GlusError(Exception):
    """Base class of every error the runtime raises on purpose."""


class EngineDirError(GlusError):
    """The engine directory is missing, incomplete, corrupt (hash) or of another schema."""


class BackendError(GlusError):
    """The requested backend or device is not available here."""


class InputError(GlusError, ValueError):
    """A bad frame, expression or argument; the stream stays usable after it."""


class InvariantError(GlusError, RuntimeError):
    """Something the runtime guarantees did not hold (a bug, not a bad input): please report it."""


class UnknownFilesWarning(UserWarning):
    """The engine directory holds files its manifest does not name (they are not used)."""
