"""The client side that qsh, qcp and the Python API share: config, terminal, connecting and
logging in."""
