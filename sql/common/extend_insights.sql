-- Extend episodes that are still detected: dates and expiry only move later (null expiry =
-- never), and only by an extension that is news - one seen on a later day than the stored row.
-- A re-run of an older day (its plan's last_seen_date is the stored one, read back) changes
-- nothing: it must not move back out the expiry of an insight closed since (a churn's close).
update insights
set
    last_seen_date = e.last_seen_date,
    expires_at = case
        when insights.expires_at is null or e.expires_at is null then null
        else greatest(insights.expires_at, e.expires_at)
    end
from stage_insight_extensions as e
where insights.id = cast(e.id as uuid)
    and e.last_seen_date > insights.last_seen_date
