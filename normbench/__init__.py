"""normbench: speed and accuracy of the normalization-layer family, measured the same way for all."""

__version__ = "0.1.0"
