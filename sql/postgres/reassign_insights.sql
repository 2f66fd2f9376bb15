-- Open insights follow their account (see sql/common/reassign_insights.sql). PostgreSQL: the
-- rows are locked first, in id order (the order the sink and mark-all-read lock them in, see
-- lock_insights.sql), so that the writers queue instead of deadlocking; the conditions are
-- checked again on the locked rows.
update insights
set user_id = o.user_id
from stage_account_owners as o
where insights.id in (
        select i.id
        from insights as i
        join stage_account_owners as s on i.customer_id = s.customer_id
        where i.user_id <> s.user_id
            and i.status not in ('dismissed', 'actioned')
            and (i.expires_at is null or i.expires_at > cast(:as_of as timestamptz))
        order by i.id
        for update of i
    )
    and insights.customer_id = o.customer_id
    and insights.user_id <> o.user_id
    and insights.status not in ('dismissed', 'actioned')
    and (insights.expires_at is null or insights.expires_at > cast(:as_of as timestamptz))
