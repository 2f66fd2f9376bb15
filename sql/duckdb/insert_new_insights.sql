-- The upsert (upsert_insights.sql) when none of the staged ids is in the table yet: the same
-- insert without the conflict clause, which DuckDB would check row by row for nothing. Its
-- insert part must stay the upsert's (test_lib_store.py compares them).
insert into insights (
    id, customer_id, customer_name, user_id, partition_date, last_seen_date, category, type,
    subject, priority, score, title, summary, evidence, so_what, recommended_action,
    fingerprint, score_parts, expires_at, pushed, rank_in_day, created_at
)
select
    cast(s.id as uuid), s.customer_id, s.customer_name, s.user_id, s.partition_date,
    s.last_seen_date, s.category, s.type, s.subject, s.priority, s.score, s.title, s.summary,
    cast(s.evidence as json), s.so_what, cast(s.recommended_action as json), s.fingerprint,
    cast(s.score_parts as json), s.expires_at, coalesce(s.pushed, true), s.rank_in_day,
    :created_at
from stage_insight_upserts as s
