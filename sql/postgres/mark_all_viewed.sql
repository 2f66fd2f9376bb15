-- Mark all read, for the owner's own insights: every new one becomes viewed.
-- PostgreSQL: the rows are locked first, in id order (the order the sink locks them in, see
-- lock_insights.sql), so a mark-all-read and a sink write wait for each other instead of
-- deadlocking; the outer conditions are checked again on the locked rows. Same rows, same
-- result as sql/common/mark_all_viewed.sql (DuckDB has no row locks, nor FOR UPDATE).
update insights
set
    status = 'viewed',
    viewed_at = coalesce(viewed_at, cast(:at as timestamptz))
where
    id in (
        select id
        from insights
        where user_id = cast(:user_id as text) and status = 'new'
        order by id
        for update
    )
    and user_id = cast(:user_id as text)
    and status = 'new'
returning cast(id as text)
