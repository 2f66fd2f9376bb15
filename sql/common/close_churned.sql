-- Close the open insights of customers that churned: their expiry moves back to the churn day
-- (never later), so the feed, the digests and the team rollups stop showing them. Status,
-- feedback and every other column stay as they are.
update insights
set expires_at = c.churned_at
from stage_churned_customers as c
where insights.customer_id = c.customer_id
    and (insights.expires_at is null or insights.expires_at > c.churned_at)
