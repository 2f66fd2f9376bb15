"""Authentication: a bearer token (API) or the feed's HttpOnly cookie becomes a `Viewer`.

Every failure looks the same to the caller (401, one message): an unknown, malformed, expired
or revoked token, or a user no longer in the directory, so a client learns nothing about which
tokens exist. Tokens are never logged; only their public id would be.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from insight_pipeline.lib import tokens
from insight_pipeline.lib.access import Viewer, resolve_viewer
from insight_pipeline.lib.store import InsightStore

COOKIE = "insights_session"
UNAUTHORIZED = "missing, invalid, expired or revoked token"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from `insight-pipeline token create USER_ID`.",
)

# A well-formed hash that matches no token: unknown token ids are compared against it, so an
# unknown id costs the same work as a wrong secret.
_NO_HASH = tokens.hash_token("")


def authenticate(
    store: InsightStore, token: str | None, *, now: datetime | None = None
) -> Viewer | None:
    """The viewer a token belongs to, or None when it must be refused."""
    if not token:
        return None
    token_id = tokens.token_id_of(token)
    record = store.token_record(token_id) if token_id else None
    good = tokens.matches(token, record["token_hash"] if record else _NO_HASH)
    if record is None or not good:
        return None
    now = now or datetime.now(UTC)
    if record["revoked_at"] is not None or not record["active"]:
        return None
    if record["expires_at"] is not None and record["expires_at"] <= now:
        return None
    return resolve_viewer(store, record)


def store_of(request: Request) -> InsightStore:
    """The app's store (set by `create_app`)."""
    return request.app.state.store


def api_viewer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Viewer:
    """FastAPI dependency of every /api route: the caller, or 401."""
    viewer = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        viewer = authenticate(store_of(request), credentials.credentials)
    if viewer is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return viewer


def cookie_viewer(request: Request) -> tuple[Viewer, str] | None:
    """The feed's caller and their session token (for the CSRF check), or None."""
    token = request.cookies.get(COOKIE)
    viewer = authenticate(store_of(request), token)
    return (viewer, token) if viewer is not None and token else None
