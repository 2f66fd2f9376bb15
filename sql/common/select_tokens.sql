-- A user's tokens without their hashes, for `insight-pipeline token list`.
select token_id, user_id, label, created_at, expires_at, revoked_at
from api_tokens
where user_id = cast(:user_id as text)
order by created_at, token_id
