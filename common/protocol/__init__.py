"""QSMP, sans-IO: records, handshake, transport, authentication, channel mux, connection."""
