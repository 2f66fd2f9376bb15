-- How many insights `reassign_insights` will move to their account's CSM now.
select count(*)
from insights as i
join stage_account_owners as o on i.customer_id = o.customer_id
where i.user_id <> o.user_id
    and i.status not in ('dismissed', 'actioned')
    and (i.expires_at is null or i.expires_at > cast(:as_of as timestamptz))
