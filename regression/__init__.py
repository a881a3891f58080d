"""linreg's library: data, model, training loop, metrics and model files.

Importing this package is cheap (no torch); the modules that need torch import it themselves.
"""

__version__ = "0.1.0"
