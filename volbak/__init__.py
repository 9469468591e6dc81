"""volbak: back up, restore and migrate Docker volumes."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
