"""One module per channel kind carried over the mux."""
