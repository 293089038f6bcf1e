"""The algorithm registry: suites (types), the implementations that fill it, randomness."""
