-- What CSMs are pushed on a day: their new insights of that day that made the daily cap, and
-- the snoozed ones whose snooze ends during that day; still open at the given instant, each
-- CSM's best first (critical first, then score).
select
    cast(id as text) as id, customer_id, customer_name, user_id, partition_date, category, type,
    subject, priority, score, rank_in_day, status, feedback, snoozed_until, expires_at,
    cast(score_parts as text) as score_parts, title
from insights
where (cast(:all_users as boolean) or user_id in :user_ids)
    and (
        (pushed and partition_date = cast(:day as date) and status in ('new', 'viewed'))
        or (
            status = 'snoozed'
            and snoozed_until >= cast(:day_start as timestamptz)
            and snoozed_until < cast(:day_end as timestamptz)
        )
    )
    and (expires_at is null or expires_at > cast(:as_of as timestamptz))
order by user_id, coalesce(rank_in_day, 0), score desc, id
