-- Bulk load of the staged upserts (csv: unquoted empty is null, quoted empty is an empty string).
copy stage_insight_upserts (
    id, customer_id, customer_name, user_id, partition_date, last_seen_date, category, type,
    subject, priority, score, title, summary, evidence, so_what, recommended_action,
    fingerprint, score_parts, expires_at, pushed, rank_in_day
) from stdin with (format csv)
