-- Revoke a token (idempotent: the first revocation time is kept).
update api_tokens
set revoked_at = coalesce(revoked_at, cast(:at as timestamptz))
where token_id = cast(:token_id as text)
returning token_id
