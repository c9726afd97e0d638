"""Who may call the score endpoint: the WebUI's own API rules (`--api`, `--api-auth user:pass,...`)."""

from __future__ import annotations

import secrets
from typing import Any


def endpoint_enabled(cmd_opts: Any) -> bool:
    """The WebUI serves its API only with --api (or --nowebui); ours follows."""
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))


def parse_api_auth(value: str | None) -> dict[str, str]:
    """`--api-auth`'s "user:password,user2:password2" as a mapping (a password may hold ':')."""
    credentials: dict[str, str] = {}
    for entry in (value or "").split(","):
        entry = entry.strip()
        if entry and ":" in entry:
            user, password = entry.split(":", 1)
            credentials[user] = password
    return credentials


def allowed(credentials: dict[str, str], user: str, password: str) -> bool:
    """Constant-time check of one user's password, as the WebUI's API does."""
    expected = credentials.get(user)
    if expected is None:
        secrets.compare_digest(password.encode(), password.encode())  # same work for unknown users
        return False
    return secrets.compare_digest(password.encode(), expected.encode())
