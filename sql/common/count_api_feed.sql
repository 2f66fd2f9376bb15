-- Totals of the API feed for one viewer: how many insights match the filters and how many of
-- those are unread to the viewer. visible and matched are select_api_feed.sql's, word for word.
with visible as (
    select
        i.id, i.user_id, i.status, i.priority, i.score, i.partition_date, i.category, i.type,
        i.customer_id, i.expires_at, i.snoozed_until, i.created_at,
        cast(null as text) as shared_by, cast(null as text) as share_note,
        cast(null as timestamptz) as shared_at
    from insights as i
    where cast(:all_users as boolean) or i.user_id in :owner_ids
    union all
    select
        i.id, i.user_id, i.status, i.priority, i.score, i.partition_date, i.category, i.type,
        i.customer_id, i.expires_at, i.snoozed_until, i.created_at,
        s.from_user_id as shared_by, s.note as share_note, s.created_at as shared_at
    from insight_shares as s
    join insights as i on i.id = s.insight_id
    where s.to_user_id = cast(:viewer_id as text)
        and not (cast(:all_users as boolean) or i.user_id in :owner_ids)
),
matched as (
    select
        v.*,
        case
            when v.user_id = cast(:viewer_id as text) then v.status = 'new'
            else r.read_at is null and (
                cast(:read_all_at as timestamptz) is null
                or coalesce(v.shared_at, v.created_at) > cast(:read_all_at as timestamptz)
            )
        end as unread
    from visible as v
    left join insight_reads as r
        on r.user_id = cast(:viewer_id as text) and r.insight_id = v.id
    where (cast(:insight_id as uuid) is null or v.id = cast(:insight_id as uuid))
        and (
            cast(:any_status as boolean)
            or v.status = cast(:status as text)
            or (cast(:status as text) is null and v.status not in ('dismissed', 'actioned'))
        )
        and (
            cast(:include_expired as boolean)
            or coalesce(v.expires_at, cast('infinity' as timestamptz)) > cast(:as_of as timestamptz)
        )
        and (
            cast(:include_snoozed as boolean)
            or v.snoozed_until is null
            or v.snoozed_until <= cast(:as_of as timestamptz)
        )
        and (cast(:customer_id as text) is null or v.customer_id = cast(:customer_id as text))
        and (cast(:category as text) is null or v.category = cast(:category as text))
        and (cast(:priority as text) is null or v.priority = cast(:priority as text))
        and (cast(:type as text) is null or v.type = cast(:type as text))
        and (cast(:date_from as date) is null or v.partition_date >= cast(:date_from as date))
        and (cast(:date_to as date) is null or v.partition_date <= cast(:date_to as date))
)
select count(*) as total, count(case when m.unread then 1 end) as unread
from matched as m
