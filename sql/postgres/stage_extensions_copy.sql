-- Bulk load of the staged extensions (csv: unquoted empty is null).
copy stage_insight_extensions (id, last_seen_date, expires_at) from stdin with (format csv)
