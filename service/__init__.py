"""Stock-direction prediction service, observable down to the single request."""

__version__ = "0.1.0"
