"""Credentials: the broker's password, a bot's token. Never in the TOML; in the environment
only where an operator chose it (the Telegram bot's SOVEREIGN_TELEGRAM_TOKEN). Read from
systemd's `LoadCredential=` directory ($CREDENTIALS_DIRECTORY, readable by the service
alone) or from a file only the service's user can read, and held in a `Secret` whose repr,
str and JSON are redacted, so that a log line, an error message, a recording header or a
JSON dump that gets one by mistake shows `***`, never the value.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NoReturn

from sovereign.errors import UsageError

MAX_BYTES = 4096  # a password or a token; anything larger is not one
REDACTED = "***"


class CredentialError(UsageError):
    """A credential cannot be read; the message names the file, never its content."""


class Secret:
    """A secret value. `reveal()` is the one way to the text; everything else redacts."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is never pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def json_default(value: object) -> str:
    """orjson's `default`: a Secret becomes its redaction; anything else is not JSON."""
    if isinstance(value, Secret):
        return REDACTED
    raise TypeError(f"{type(value).__name__} is not JSON")


def load(name: str, path: str | Path | None = None) -> Secret:
    """The credential `name`: from $CREDENTIALS_DIRECTORY/<name> when systemd passed one
    (LoadCredential=<name>:...), else from `path`, which must be a regular file (not a
    symlink) of this user that nobody else may read. A trailing newline is dropped."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / name).is_file():
        return Secret(_read(Path(directory) / name, private=False))  # systemd made it ours alone
    if path is None:
        raise CredentialError(f"credential {name!a}: not in $CREDENTIALS_DIRECTORY and no file given")
    return Secret(_read(Path(path), private=True))


def read_file(path: str | Path) -> Secret:
    """The credential in file `path`, which must be a regular file (not a symlink) of this
    user that nobody else may read (the one a config names, over $CREDENTIALS_DIRECTORY)."""
    return Secret(_read(Path(path), private=True))


def _read(path: Path, *, private: bool) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise CredentialError(f"credential file {path}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"credential file {path}: not a regular file")
        if private and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            raise CredentialError(f"credential file {path}: owned by uid {st.st_uid} with mode "
                                  f"{st.st_mode & 0o777:o}; it must be uid {os.geteuid()}'s, mode 0600 "
                                  "or 0400")  # fmt: skip
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CredentialError(f"credential file {path}: larger than {MAX_BYTES} bytes, not a credential")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise CredentialError(f"credential file {path}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise CredentialError(f"credential file {path}: empty")
    return text
