"""xlog: capture fine-tuning runs as experience records and publish them."""
__version__ = "0.1.0"

from .store import LocalStore  # noqa: E402

__all__ = ["XLogCallback", "LocalStore", "__version__"]


def __getattr__(name: str):
    # transformers takes seconds to import: load it only when the callback is asked for.
    if name == "XLogCallback":
        from .callback import XLogCallback
        return XLogCallback
    raise AttributeError(name)
