"""Who may use the console: the users file, passwords and API tokens, cookie sessions with their
CSRF token, the two roles, and a short lockout after repeated failed logins.

The users file has one user a line (``#`` starts a comment)::

    alice operator scrypt$16384$8$1$<salt b64>$<hash b64>
    grafana viewer token$<sha256 hex of the token>

A password is kept as an scrypt hash and a token as its SHA-256 (a token is 32 random bytes, so
a plain hash is enough): the file never holds anything that logs in by itself.
``edgewise console-user`` writes these lines with :func:`hash_password` and :func:`new_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from ..errors import InputError

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
CREDENTIAL = "edgewise-console-users"  # the systemd credential read without --users
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# scrypt cost: about 50 ms and 16 MiB a check; a file may ask for more, within these bounds
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_MAX_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    secret: str  # scrypt$... or token$...

    @property
    def is_token(self) -> bool:
        return self.secret.startswith("token$")


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` for the users file."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def new_token() -> tuple[str, str]:
    """A fresh API token and its ``token$<sha256 hex>`` for the users file (the token itself
    is shown once and kept nowhere)."""
    token = secrets.token_urlsafe(32)
    return token, f"token${_sha256(token)}"


def user_line(name: str, role: str, secret: str) -> str:
    """One line of the users file; InputError if the name or role cannot be written there."""
    _check_name(name)
    if role not in ROLES:
        raise InputError(f"role {role!r}: write viewer or operator")
    return f"{name} {role} {secret}"


def verify_password(secret: str, password: str) -> bool:
    """Whether ``password`` matches an ``scrypt$...`` secret (False for anything else)."""
    try:
        n, r, p, salt, digest = _scrypt_parts(secret)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


class Users:
    """The users of the console, by name; tokens are looked up by their hash."""

    def __init__(self, users: list[User]):
        self._by_name = {u.name: u for u in users}
        self._by_token = {u.secret.removeprefix("token$"): u for u in users if u.is_token}

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> User | None:
        return self._by_name.get(name)

    def check_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs; a token user never logs in with a password."""
        user = self._by_name.get(name)
        if user is None or user.is_token:
            verify_password(_DUMMY, password)  # the same time for a name that is not there
            return None
        return user if verify_password(user.secret, password) else None

    def check_token(self, token: str) -> User | None:
        return self._by_token.get(_sha256(token))


def default_users_path() -> Path | None:
    """The systemd credential ``edgewise-console-users``, when the service has one."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / CREDENTIAL if directory else None


def load_users(path: Path) -> Users:
    """The users file at ``path``; InputError naming the file, the line and what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"users file {path}: cannot read it ({why})") from exc
    users: list[User] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            user = _parse_line(line)
        except ValueError as exc:
            raise InputError(f"users file {path}, line {number}: {exc}") from None
        if any(u.name == user.name for u in users):
            raise InputError(f"users file {path}, line {number}: user {user.name!r} again")
        users.append(user)
    if not users:
        raise InputError(
            f"users file {path} has no users; add one with `edgewise console-user NAME ROLE`"
        )
    return Users(users)


def _parse_line(line: str) -> User:
    words = line.split()
    if len(words) != 3:
        raise ValueError(f"{len(words)} words; write NAME ROLE SECRET")
    name, role, secret = words
    _check_name(name, ValueError)
    if role not in ROLES:
        raise ValueError(f"role {role!r}: write viewer or operator")
    if secret.startswith("token$"):
        if not _HEX64.match(secret.removeprefix("token$")):
            raise ValueError("a token secret is token$ and 64 lowercase hex digits")
    elif secret.startswith("scrypt$"):
        _scrypt_parts(secret)
    else:
        raise ValueError("the secret is scrypt$... (a password) or token$... (an API token)")
    return User(name, cast(Role, role), secret)


def _check_name(name: str, error: type[Exception] = InputError) -> None:
    if not _NAME.match(name):
        raise error(f"user name {name!r}: letters, digits, '_', '.', '@', '-'; at most 64")


def _scrypt_parts(secret: str) -> tuple[int, int, int, bytes, bytes]:
    parts = secret.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("a password secret is scrypt$N$R$P$SALT$HASH")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("scrypt$N$R$P$SALT$HASH: N, R, P numbers, SALT and HASH base64") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * r * n > _MAX_MEMORY:
        raise ValueError(f"scrypt cost N={n} R={r} P={p} is out of bounds")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("scrypt salt or hash too short")
    return n, r, p, salt, digest


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY + 2**20, dklen=32
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


_DUMMY = hash_password("not a password anyone has")


# --- sessions and lockout -------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    role: Role
    csrf: str
    expires_at: float


class Sessions:
    """Cookie sessions in memory (a restart logs everyone out), each with its CSRF token."""

    def __init__(self, ttl_s: float = 12 * 3600, clock: Callable[[], float] = time.time):
        self._ttl, self._clock = ttl_s, clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self, user: User) -> Session:
        now = self._clock()
        session = Session(
            secrets.token_urlsafe(32), user.name, user.role, secrets.token_urlsafe(32),
            now + self._ttl,
        )  # fmt: skip
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


@dataclass
class Lockout:
    """After ``failures`` failed logins in a row, a name is refused for ``lock_s`` seconds
    (right password or not): guessing goes at a few tries a minute."""

    failures: int = 5
    lock_s: float = 60.0
    clock: Callable[[], float] = time.time
    _failed: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def locked_for(self, name: str) -> float:
        """Seconds ``name`` is still locked out (0: not locked)."""
        return max(0.0, self._until.get(name, 0.0) - self.clock())

    def failed(self, name: str) -> None:
        count = self._failed.get(name, 0) + 1
        if count >= self.failures:
            self._until[name] = self.clock() + self.lock_s
            count = 0
        self._failed[name] = count
        if len(self._failed) > 10_000:  # names that are not users must not grow this forever
            self._failed.clear()

    def succeeded(self, name: str) -> None:
        self._failed.pop(name, None)
        self._until.pop(name, None)
