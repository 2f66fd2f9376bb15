-- Staging table for one directory sync, filled by copy (all text: the store validated it).
create temp table stage_users (
    user_id text,
    name text,
    email text,
    role text,
    manager_id text
) on commit drop
