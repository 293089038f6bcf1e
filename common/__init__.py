"""The qsh sans-IO protocol core and its asyncio adapter."""

#: The release, for every command's ``-V`` (common/cli.py) and the package metadata
#: (pyproject reads it).
__version__ = "0.1.0"
