-- The feed: open insights for the given CSMs (or all of them) best first, hiding the expired,
-- the dismissed and the still-snoozed; the order is total (id last) so pages are stable.
select
    cast(id as text) as id, customer_id, customer_name, user_id, partition_date, last_seen_date,
    category, type, subject, priority, score, title, summary, cast(evidence as text) as evidence,
    so_what, cast(recommended_action as text) as recommended_action, fingerprint,
    cast(score_parts as text) as score_parts, status, feedback, snoozed_until, expires_at,
    created_at, viewed_at, actioned_at
from insights
where status <> 'dismissed'
    and (expires_at is null or expires_at > cast(:as_of as timestamptz))
    and (snoozed_until is null or snoozed_until <= cast(:as_of as timestamptz))
    and (cast(:all_users as boolean) or user_id in :user_ids)
    and (cast(:customer_id as text) is null or customer_id = cast(:customer_id as text))
order by
    case priority when 'high' then 0 when 'medium' then 1 when 'low' then 2 else 3 end,
    score desc,
    partition_date desc,
    id
limit :limit offset :offset
