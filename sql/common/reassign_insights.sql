-- Open insights follow their account: a customer whose CSM changed (customers.csm_user_id) has
-- its insights still open as of the run's (first) day (not dismissed or actioned, not expired) moved to
-- the new CSM, who now sees them in the feed, the digest and the team views; the old CSM no
-- longer does. Handled and expired ones stay with whoever had them (their history), and the
-- feedback log keeps its own user. (PostgreSQL runs sql/postgres/reassign_insights.sql: the
-- same, locking the rows in id order.)
update insights
set user_id = o.user_id
from stage_account_owners as o
where insights.customer_id = o.customer_id
    and insights.user_id <> o.user_id
    and insights.status not in ('dismissed', 'actioned')
    and (insights.expires_at is null or insights.expires_at > cast(:as_of as timestamptz))
