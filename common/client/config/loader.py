"""The configuration for one host (:func:`resolve`): the ``-o`` options, then the file's
blocks that apply, then the command line's user and port, merged by ssh's rule (the first
value wins); and what a resolved configuration sends as environment
(:func:`environment_to_send`)."""

from __future__ import annotations

import os
import re

from common.accounts.patterns import patterns_match
from common.client.config.keywords import _ENV_NAME, IGNORED_KEYWORDS
from common.client.config.match import _Context
from common.client.config.parser import (
    _parse_file,
    _parse_option,
    _parse_setting,
    _quote,
    _read,
    _Setting,
)
from common.client.config.settings import (
    DEFAULT_PORT,
    ClientConfig,
    ConfigError,
    _as_path,
    _home,
    _local_user,
    default_config_path,
)
from common.client.config.tokens import _control_tokens, _expand_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (issue 18)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any


def _settings_for(context: _Context, options: Sequence[str], path: str | Path | None
                  ) -> Iterator[_Setting]:
    """In order: each block's conditions judged when it is reached (lazily, so that the
    settings already taken are what ``Match host``/``user`` see)."""
    yield from (_parse_option(text) for text in options)
    if path is not None and str(path) == "none":  # ssh -F none: no file at all
        return
    explicit = path is not None
    path = path if path is not None else default_config_path()
    text = _read(path, explicit=explicit)
    if text is None:
        return
    for block in _parse_file(text, str(path)):
        if block.applies(context):
            yield from block.settings


def resolve(
    host: str,
    *,
    path: str | Path | None = None,
    options: Sequence[str] = (),
    user: str | None = None,
    port: int | None = None,
    identity_files: Sequence[str | os.PathLike[str]] = (),
) -> ClientConfig:
    """Merge ``-o`` options, the config file and the explicit arguments for ``host``.

    ``path`` is ``-F`` (must exist; ``none`` reads no file); without it ``~/.qsh/config``
    is read if present. ``user``/``port`` come from ``-l``/``user@``/``-p`` and win over
    everything. ``identity_files`` are ``-i`` keys: tried before any IdentityFile, and
    ``~``/tokens are expanded in them too, as ssh does.
    """
    if not host:
        raise ConfigError("empty host name")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"bad port {port} (1-65535)")
    if user == "":
        raise ConfigError("empty user name")
    if path is not None:
        path = _as_path(os.fspath(path))  # as a Path would have it (-F ./none is none)

    first: dict[str, _Setting] = {}
    collected = [
        _parse_setting("IdentityFile", _quote(os.fspath(p)), f"-i {os.fspath(p)!r}")
        for p in identity_files
    ]
    forwards: list[Any] = []  # parse_forward's ForwardSpecs (ClientConfig.forwards)
    notes: list[str] = []
    send_env: list[str] = []
    def hostname_so_far() -> str:
        if "hostname" not in first:
            return host
        return re.sub(r"%(.)", lambda m: host if m.group(1) == "h" else "%",
                      str(first["hostname"].value))

    def user_so_far() -> str:
        return user if user is not None else str(first["user"].value) if "user" in first \
            else _local_user()

    def port_so_far() -> int:
        if port is not None:
            return port
        value = first["port"].value if "port" in first else DEFAULT_PORT
        assert isinstance(value, int)
        return value

    context = _Context(host, hostname_so_far, user_so_far, port_so_far)
    for setting in _settings_for(context, options, path):
        name = setting.keyword.name
        if name in IGNORED_KEYWORDS:
            note = f"{name} {setting.text}: ignored ({IGNORED_KEYWORDS[name]})"
            if note not in notes:
                notes.append(note)
        elif not setting.keyword.attr:
            continue
        elif name == "SendEnv":
            assert isinstance(setting.value, list)
            send_env.extend(setting.value)
        elif setting.keyword.attr == "forwards":
            forwards.append(setting.value)
        elif setting.keyword.multiple:
            collected.append(setting)
        else:
            first.setdefault(setting.keyword.attr, setting)
    values: dict[str, Any] = {attr: setting.value for attr, setting in first.items()}

    hostname = hostname_so_far()  # every line read: these are the final values
    values.pop("hostname", None)
    values["user"], values["port"] = user_so_far(), port_so_far()
    kind, proxy = values.pop("proxy", (None, None))
    if proxy is not None:
        values["proxy_command" if kind == "command" else "proxy_jump"] = proxy
    if path is not None:
        values["config_file"] = path

    home = _home()
    tokens = context.tokens()
    if "known_hosts" in values:
        values["known_hosts"] = _expand_path(
            str(values["known_hosts"]), tokens, home, first["known_hosts"].origin)
    if collected:
        files = [_expand_path(str(s.value), tokens, home, s.origin) for s in collected]
        values["identity_files"] = list(dict.fromkeys(files))
    if forwards:
        values["forwards"] = forwards
    if "control_path" in values:
        control = str(values["control_path"])
        values["control_path"] = None if control.lower() == "none" else _expand_path(
            control, {**tokens, **_control_tokens(tokens)}, home, first["control_path"].origin)
    if values.get("compression"):
        notes.append("Compression yes: ignored (qsh sends records uncompressed: compressing "
                     "before encrypting lets an observer learn about the plaintext from "
                     "record sizes)")
    patterns: list[str] = []
    for pattern in send_env:  # ssh: "-NAME" removes what earlier lines added
        if pattern.startswith("-"):
            patterns = [p for p in patterns if not patterns_match((pattern[1:],), (p,))]
        else:
            patterns.append(pattern)
    values["send_env"] = patterns
    values["notes"] = notes
    return ClientConfig(host=host, hostname=hostname, **values)


def environment_to_send(cfg: ClientConfig, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """SendEnv's matching local variables, then SetEnv's pairs, as "env" requests."""
    sent = [(name, value) for name, value in environ.items()
            if _ENV_NAME.fullmatch(name) and any(
                re.fullmatch(re.escape(p).replace(r"\*", ".*").replace(r"\?", "."), name)
                for p in cfg.send_env)]
    return sent + list(cfg.set_env)
