-- Mark all read, for the owner's own insights: every new one becomes viewed.
-- (PostgreSQL runs sql/postgres/mark_all_viewed.sql: the same, locking the rows in id order.)
update insights
set
    status = 'viewed',
    viewed_at = coalesce(viewed_at, cast(:at as timestamptz))
where user_id = cast(:user_id as text) and status = 'new'
returning cast(id as text)
