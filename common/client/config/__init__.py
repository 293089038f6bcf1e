"""The client configuration, ``~/.qsh/config``, read the way ssh reads ``~/.ssh/config``.

Users bring their ssh_config habits, so the grammar and the precedence are OpenSSH's
(ssh_config(5)), not an invention of ours::

    # options before the first Host apply to every host
    IdentityFile ~/.qsh/id_%h
    Host db "build box" !bastion      # patterns: * ? and !negation
        HostName %h.internal
        Port=2200
    Host *
        User alice

* For every option the **first** value obtained wins: command-line ``-o`` options first, then
  each matching block in file order. General defaults therefore belong at the end, under
  ``Host *``. IdentityFile is the exception: every value is collected, in that order.
* ``-l``/``user@`` and ``-p`` beat everything (:func:`resolve`'s ``user``/``port``).
* Every value is checked even in blocks that do not match the host being resolved, as ssh
  does, so a typo is reported on the first run and not only when one host is used.
* Errors are one line, ``file:line: message``, raised as :class:`ConfigError`.

Decisions that differ from ssh, and why:

* Host patterns compare case-insensitively (ssh compares the name as typed): host names are
  case-insensitive, and a block that silently stops applying because of ``Web1`` vs ``web1``
  is a security surprise. This also keeps one pattern implementation for known_hosts and
  the config (:func:`common.accounts.patterns.patterns_match`).
* Every other ssh_config keyword is understood (the tools that run ssh -- Ansible, git,
  rsync -- pass them): the ones that mean something for qsh are implemented; those that
  cannot apply (GSSAPI, X11, agents, OpenSSH algorithm names, ...) are accepted and ignored,
  each with the reason as a ``-v`` line (:attr:`ClientConfig.notes`). Only a word that is no
  ssh keyword at all is an error. ``Match`` (host, originalhost, user, localuser, exec, all,
  final; canonical never holds, as qsh does not canonicalise) and ``Include`` as in ssh,
  judged lazily so that ``Match host`` sees the HostName set before it.
  ``ProxyCommand`` and ``ProxyJump`` (:mod:`common.client.proxy`)
  share one slot, so whichever comes first wins, as in ssh.
* KEMs/Ciphers/Signatures are checked for syntax only. Which algorithms exist depends on the
  machine (liboqs is optional), so availability is judged when the offer is built.

One job a module, lowest first: :mod:`.settings` (:class:`ClientConfig`, its defaults and
:class:`ConfigError`), :mod:`.tokens` (the %-tokens: which a keyword allows, their
expansion, ControlPath's %C), :mod:`.keywords` (the keyword table: each keyword's field and
how its value is checked; the ssh keywords ignored, and why), :mod:`.match` (Host and Match
conditions, judged as the file is read), :mod:`.parser` (the file's grammar: lines, quotes,
Include, ``-o`` options), :mod:`.loader` (:func:`resolve`: every source merged for one
host), :mod:`.printing` (``qsh -G``, loaded only by :func:`dump`: a run that connects does
not need it). The names below are the package's interface; import them from here.
"""

from __future__ import annotations

from common.client.config.keywords import AUTH_METHODS, IGNORED_KEYWORDS
from common.client.config.loader import environment_to_send, resolve
from common.client.config.match import MATCH_EXEC_TIMEOUT
from common.client.config.parser import INCLUDE_DEPTH, parse_option
from common.client.config.settings import (
    DEFAULT_PORT,
    HOST_KEY_CHECKING,
    LOG_LEVELS,
    REQUEST_TTY,
    ClientConfig,
    ConfigError,
    default_config_path,
    default_identity_files,
    default_known_hosts,
    wants_pty,
)

__all__ = [
    "AUTH_METHODS",
    "DEFAULT_PORT",
    "HOST_KEY_CHECKING",
    "IGNORED_KEYWORDS",
    "INCLUDE_DEPTH",
    "LOG_LEVELS",
    "MATCH_EXEC_TIMEOUT",
    "REQUEST_TTY",
    "ClientConfig",
    "ConfigError",
    "default_config_path",
    "default_identity_files",
    "default_known_hosts",
    "dump",
    "environment_to_send",
    "parse_option",
    "resolve",
    "wants_pty",
]


def dump(cfg: ClientConfig) -> list[str]:
    """``qsh -G``'s lines (:func:`common.client.config.printing.dump`)."""
    from common.client.config.printing import dump

    return dump(cfg)
