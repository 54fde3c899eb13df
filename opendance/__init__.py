"""opendance: a self-hostable server for the Seedance-2.0-style video generation task API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
