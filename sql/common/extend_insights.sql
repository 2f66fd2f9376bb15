-- Extend episodes that are still detected: dates and expiry only move later (null expiry = never).
update insights
set
    last_seen_date = greatest(insights.last_seen_date, e.last_seen_date),
    expires_at = case
        when insights.expires_at is null or e.expires_at is null then null
        else greatest(insights.expires_at, e.expires_at)
    end
from stage_insight_extensions as e
where insights.id = cast(e.id as uuid)
