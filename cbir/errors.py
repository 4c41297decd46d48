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
