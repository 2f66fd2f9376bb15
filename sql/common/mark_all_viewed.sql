-- Mark all read, for the owner's own insights: every new one becomes viewed.
update insights
set
    status = 'viewed',
    viewed_at = coalesce(viewed_at, cast(:at as timestamptz))
where user_id = cast(:user_id as text) and status = 'new'
returning cast(id as text)
