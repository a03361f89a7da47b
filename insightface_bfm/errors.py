"""The project's error types.

Every error a user can cause by bad input derives from ``BFMError`` and carries a one-line
message naming the input and what is wrong; the CLI prints that line and exits with status 2
instead of a traceback.
"""


class BFMError(Exception):
    """Bad input or state that the user can fix; the message says what and where."""


class ImageError(BFMError, ValueError):
    """An image that is missing, unreadable, corrupt or of the wrong shape or type."""


class NoFaceError(ImageError):
    """An image in which no face was found where the request needs one."""


class NotFoundError(BFMError, LookupError):
    """A named thing that does not exist: a gallery file, an identity in a gallery."""


class InUseError(BFMError):
    """An output another run is writing (its run lock is held)."""


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


class MissingExtraError(BFMError, ImportError):
    """A training command in an inference-only install (no torch: the ``[train]`` extra)."""


TRAIN_EXTRA = 'pip install "insightface-bfm[train]"'
TRAIN_EXTRA_CLONE = 'pip install -e ".[train]"'  # the same from a clone of the repository
TRAIN_MODULES = ("torch", "safetensors")


def missing_training(command: str, module: str = "torch") -> MissingExtraError:
    return MissingExtraError(f"{command} needs the training extra ({module} is not installed): {TRAIN_EXTRA} "
                             f"(in a clone of the repository: {TRAIN_EXTRA_CLONE})")


def first_missing_module(modules) -> str | None:
    """The first of ``modules`` that cannot be imported (looked up, not imported), or None."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return module
    return None


def require_training(command: str) -> None:
    """Fail with one line naming ``pip install "insightface-bfm[train]"`` when torch is absent,
    before any work (a training command's ``--help`` never gets here)."""
    module = first_missing_module(TRAIN_MODULES)
    if module is not None:
        raise missing_training(command, module)
