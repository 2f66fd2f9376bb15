-- What the team rollups of a day range need to know of the insights: every account insight
-- raised on or before the last day that can matter from the given instant on (not expired by
-- then, actioned since, or with feedback since), with the columns the rollups count by.
select
    cast(i.id as text) as id, i.customer_id, i.user_id, i.category, i.type, i.priority,
    i.score, i.partition_date, i.expires_at, i.created_at, i.actioned_at
from insights as i
where i.customer_id is not null
    and i.partition_date <= cast(:last_day as date)
    and (
        i.expires_at is null
        or i.expires_at >= cast(:since as timestamptz)
        or i.actioned_at >= cast(:since as timestamptz)
        or i.partition_date >= cast(:since_day as date)
        or exists (
            select 1
            from insight_feedback as f
            where f.insight_id = i.id and f.created_at >= cast(:since as timestamptz)
        )
    )
order by i.id
