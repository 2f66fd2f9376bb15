-- The insights a digest may carry: raised on or before the last day, still open at some point
-- after open_after (not expired by then), not dismissed or actioned, and not snoozed past
-- as_of. Selection, ranking and the per-CSM cap are done in lib/digest.py.
select
    cast(id as text) as id, customer_id, customer_name, user_id, partition_date, last_seen_date,
    category, type, priority, score, title, summary,
    cast(recommended_action as text) as recommended_action, status,
    cast(score_parts as text) as score_parts
from insights
where partition_date <= cast(:last_day as date)
    and status not in ('dismissed', 'actioned')
    and (expires_at is null or expires_at > cast(:open_after as timestamptz))
    and (snoozed_until is null or snoozed_until <= cast(:as_of as timestamptz))
order by user_id, id
