-- Bulk load of the staged quality metrics (csv: unquoted empty is null).
copy stage_insight_quality (
    quality_date, window_days, scope, scope_key, acted, relevant, actioned, relevance_rate,
    action_rate
) from stdin with (format csv)
