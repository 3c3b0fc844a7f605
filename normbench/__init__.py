"""normbench: speed and accuracy of the normalization-layer family, measured the same way for all."""

from importlib import metadata

try:
    __version__ = metadata.version("normbench")  # pyproject.toml's, the one place it is written
except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH that was never installed
    __version__ = "0+unknown"
