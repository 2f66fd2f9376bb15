-- A new API token: only its sha256 hash is kept; the token itself is shown once.
insert into api_tokens (token_id, token_hash, user_id, label, created_at, expires_at)
values (
    cast(:token_id as text),
    cast(:token_hash as text),
    cast(:user_id as text),
    cast(:label as text),
    cast(:created_at as timestamptz),
    cast(:expires_at as timestamptz)
)
