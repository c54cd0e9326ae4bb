"""The errors ``xsearch`` raises for conditions a user can act on; the command line prints them
as one line (exit code 1). ``XSearchError`` is the base class library users can catch."""
from __future__ import annotations


class XSearchError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class MissingExtraError(XSearchError, ImportError):
    """An optional engine (Ray, submitit) is not installed; the message names the extra."""


__all__ = ["XSearchError", "MissingExtraError"]
