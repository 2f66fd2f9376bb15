-- The team rollup: insights raised in [date_from, date_to] for the owners in scope (every owner
-- for a leader; shares are not the team's), counted by CSM, category and priority and by what
-- was done with them; the store derives relevance and action rates from these counts.
select
    i.user_id, max(u.name) as user_name, i.category, i.priority,
    count(*) as insights,
    count(
        case
            when i.status not in ('dismissed', 'actioned')
                and (i.expires_at is null or i.expires_at > cast(:as_of as timestamptz))
                then 1
        end
    ) as open_insights,
    count(case when i.status = 'new' then 1 end) as unread,
    count(case when i.status = 'dismissed' then 1 end) as dismissed,
    count(case when i.status = 'actioned' then 1 end) as actioned,
    count(case when i.status = 'snoozed' then 1 end) as snoozed
from insights as i
left join users as u on u.user_id = i.user_id
where (cast(:all_users as boolean) or i.user_id in :owner_ids)
    and i.partition_date >= cast(:date_from as date)
    and i.partition_date <= cast(:date_to as date)
group by i.user_id, i.category, i.priority
order by i.user_id, i.category, i.priority
