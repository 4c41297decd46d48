"""One family of exceptions for everything cbir can refuse.

Library code raises these and never prints or exits; the CLI turns any
:class:`CbirError` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations


class CbirError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 1


class UsageError(CbirError):
    """An argument or option that cannot work (bad k, unknown extractor...)."""

    exit_code = 2


class ImageError(CbirError):
    """A file that cannot be decoded as an image."""


class NoImagesError(CbirError):
    """A folder that holds no readable image."""


class IndexNotFoundError(CbirError):
    """No index of that name in the index directory."""


class IndexCorruptError(CbirError):
    """An index directory whose files are missing, unreadable or inconsistent."""


class IndexLockedError(CbirError):
    """Another process is writing to the index."""


class IndexReadOnlyError(CbirError):
    """A change asked of an index stored where this process cannot write."""


class NotInIndexError(CbirError):
    """An image id the index does not hold."""


class IndexedFileError(NotInIndexError):
    """An indexed image whose file is gone, changed since it was indexed, or now lies outside the indexed folders."""


class ConfigMismatchError(CbirError):
    """The requested extractor config differs from the one the index was built with."""


class LabelsError(CbirError):
    """A labels file that does not match the indexed collection."""


class WeightsError(CbirError):
    """Model weights that cannot be found, downloaded or loaded."""


class MissingExtraError(CbirError):
    """An optional part of cbir whose packages are not installed (see :mod:`cbir.extras`)."""


class DiskFullError(CbirError):
    """No space left (or quota reached) where cbir writes; what was committed before is kept."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: ``ENOSPC``/``EDQUOT``, SQLite's ``SQLITE_FULL``, FAISS's write error."""
    import errno

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if getattr(exc, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
        return True
    text = str(exc)
    # SQLite's message when no error code is attached; FAISS's C++ writers report errno as text.
    return "database or disk is full" in text or "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_error(where: str) -> DiskFullError:
    """The one message for a full disk: where, and that a rerun finishes the work."""
    return DiskFullError(
        f"no space left on the device for {where}; free some space and run the same command again "
        "(what was committed before is kept)"
    )
