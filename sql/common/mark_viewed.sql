-- The owner opened an insight: new becomes viewed (other statuses stay), first view stamped.
update insights
set
    status = case when status = 'new' then 'viewed' else status end,
    viewed_at = coalesce(viewed_at, cast(:at as timestamptz))
where id = cast(:insight_id as uuid) and user_id = cast(:user_id as text)
returning cast(id as text)
