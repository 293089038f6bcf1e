"""qshd."""
