"""The project's error types.

Every error a user can cause by bad input derives from ``BFMError`` and carries a one-line
message naming the input and what is wrong; the CLI prints that line and exits with status 2
instead of a traceback.
"""


class BFMError(Exception):
    """Bad input or state that the user can fix; the message says what and where."""


class ImageError(BFMError, ValueError):
    """An image that is missing, unreadable, corrupt or of the wrong shape or type."""


class DatasetError(BFMError, ValueError):
    """A dataset path or file that cannot be read as a training or evaluation set."""


class RecipeError(BFMError, ValueError):
    """A recipe file with an unknown key, a wrong type or a missing value."""


class PackError(BFMError, ValueError):
    """A BFM pack or model file that is missing, altered or inconsistent."""


class DownloadError(BFMError, OSError):
    """A download that failed: HTTP error, no network, truncated file, wrong checksum."""


class ChecksumError(DownloadError, PackError):
    """A file whose sha256 differs from the one its registry or pack declares."""


class UnsafePickleError(BFMError, ValueError):
    """A pickle that holds anything other than the structure we expect."""
