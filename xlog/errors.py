"""The errors ``xlog`` raises for conditions a user can act on.

Every one derives from ``XLogError``, which the command line catches and prints as one line
(exit code 1) instead of a traceback; library users can catch the same base class. An error
that is not an ``XLogError`` is a bug, and keeps its traceback.
"""
from __future__ import annotations


class XLogError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class StoreNotWritableError(XLogError):
    """The store root (``$XLOG_HOME``) or a file in it cannot be written: read-only, full,
    or a file where a folder should be."""


class LedgerError(XLogError):
    """The ledger of pushed records cannot be used (and could not be rebuilt)."""


__all__ = ["XLogError", "StoreNotWritableError", "LedgerError"]
