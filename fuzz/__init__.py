"""atheris harnesses for the sans-IO core; see fuzz/README.md."""
