"""qpasswd."""
