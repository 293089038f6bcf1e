"""The qsh sans-IO protocol core and its asyncio adapter."""

#: The release, for every command's ``-V`` and the package metadata (pyproject reads it).
__version__ = "0.1.0"


def version_line(program: str) -> str:
    """What ``PROGRAM -V`` prints, in the shape of ssh's: program, release, protocol and
    the Python it runs on (the crypto libraries vary with it)."""
    import platform

    return f"{program} {__version__} (qsh; QSMP 1; Python {platform.python_version()})"
