"""API bearer tokens: made here, stored by the store as hashes only, checked in constant time.

A token reads `ipt_<token id>_<secret>`. The token id is public (it names the token in listings,
revocation and logs); the secret is 256 random bits. The store keeps sha256(token) and looks a
token up by its id, then the hashes are compared with `hmac.compare_digest`, so neither the
lookup nor the comparison reveals anything about the secret. A stolen database holds no usable
token. Tokens never appear in logs: only the token id may.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "ipt"
_TOKEN = re.compile(r"^ipt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def new_token() -> tuple[str, str, str]:
    """A fresh token as (token_id, token, token_hash); show `token` once, store the hash."""
    token_id = secrets.token_hex(8)
    token = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
    return token_id, token, hash_token(token)


def hash_token(token: str) -> str:
    """The stored form of a token: hex sha256 of its text."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id_of(token: str) -> str | None:
    """The public id of a well-formed token, or None (malformed tokens never reach the store)."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def matches(token: str, stored_hash: str) -> bool:
    """Whether `token` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_token(token).encode("ascii"), stored_hash.encode("ascii"))


def csrf_token(token: str) -> str:
    """The web feed's anti-forgery value for a session token (an HMAC keyed by the token, so it
    needs no server state and is worthless without the HttpOnly cookie it belongs to)."""
    return hmac.new(token.encode("utf-8"), b"insight-feed-csrf", hashlib.sha256).hexdigest()[:32]
