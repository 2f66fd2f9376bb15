-- A token by its public id with its owner, for authentication (the caller compares hashes).
select
    t.token_hash, t.expires_at, t.revoked_at,
    u.user_id, u.name, u.email, u.role, u.manager_id, u.active, u.read_all_at
from api_tokens as t
join users as u on u.user_id = t.user_id
where t.token_id = cast(:token_id as text)
