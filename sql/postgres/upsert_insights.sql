-- Insert the staged insights as new; on an existing id refresh the content, widen the episode
-- (first seen earliest, last seen and expiry latest) and never touch the user's columns.
-- Rows are taken in id order: existing ones are already locked (lock_insights.sql), and two
-- writers inserting the same new ids then wait in one order, never in a cycle.
insert into insights (
    id, customer_id, customer_name, user_id, partition_date, last_seen_date, category, type,
    subject, priority, score, title, summary, evidence, so_what, recommended_action,
    fingerprint, score_parts, expires_at, pushed, rank_in_day, created_at
)
select
    s.id, s.customer_id, s.customer_name, s.user_id, s.partition_date, s.last_seen_date,
    s.category, s.type, s.subject, s.priority, s.score, s.title, s.summary, s.evidence,
    s.so_what, s.recommended_action, s.fingerprint, s.score_parts, s.expires_at,
    coalesce(s.pushed, true), s.rank_in_day, :created_at
from stage_insight_upserts as s
order by s.id
on conflict (id) do update set
    customer_name = excluded.customer_name,
    user_id = excluded.user_id,
    category = excluded.category,
    type = excluded.type,
    subject = excluded.subject,
    priority = excluded.priority,
    score = excluded.score,
    title = excluded.title,
    summary = excluded.summary,
    evidence = excluded.evidence,
    so_what = excluded.so_what,
    recommended_action = excluded.recommended_action,
    score_parts = excluded.score_parts,
    fingerprint = excluded.fingerprint,
    pushed = excluded.pushed,
    rank_in_day = excluded.rank_in_day,
    partition_date = least(insights.partition_date, excluded.partition_date),
    last_seen_date = greatest(insights.last_seen_date, excluded.last_seen_date),
    expires_at = case
        when insights.expires_at is null or excluded.expires_at is null then null
        else greatest(insights.expires_at, excluded.expires_at)
    end
