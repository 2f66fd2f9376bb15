-- Every column of the given insights (or of all), by id: the detail view and test snapshots.
select
    cast(id as text) as id, customer_id, customer_name, user_id, partition_date, last_seen_date,
    category, type, subject, priority, score, title, summary, cast(evidence as text) as evidence,
    so_what, cast(recommended_action as text) as recommended_action, fingerprint,
    cast(score_parts as text) as score_parts, status, feedback, snoozed_until, expires_at,
    created_at, viewed_at, actioned_at
from insights
where cast(:all_ids as boolean) or id in :ids
order by id
