"""Forwarding TCP connections over channels, for both ends (``qsh -T/-L/-R/-D``, qshd).

:mod:`~common.forward.pump` moves one TCP connection's bytes over one channel, with flow
control and half-close both ways; :mod:`~common.forward.listen` opens the local listeners;
:mod:`~common.forward.socks` reads a SOCKS5 or SOCKS4a request. Policy (who may forward
where) is the caller's: this layer only moves bytes and bounds what it reads.
"""
