"""xsearch: query the federated experience store and search fine-tuning configurations with it."""
from xlog import __version__

__all__ = ["__version__"]
