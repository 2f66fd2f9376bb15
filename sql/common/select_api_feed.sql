-- The API feed for one viewer: insights of the owners the viewer may see (every owner for a
-- leader) plus those shared with the viewer, filtered, best first (priority, score, newest,
-- id: a total order, so pages are stable), with who shared each one and whether it is unread
-- to the viewer, and the totals over all pages (window counts, computed in the same scan: one
-- statement instead of two halves the work for large scopes). An empty page carries no totals:
-- count_api_feed.sql, which repeats visible and matched word for word, answers then.
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
),
page as (
    select
        m.*,
        case m.priority when 'high' then 0 when 'medium' then 1 when 'low' then 2 else 3 end
            as priority_rank,
        count(*) over () as total_count,
        count(case when m.unread then 1 end) over () as unread_count
    from matched as m
    order by priority_rank, m.score desc, m.partition_date desc, m.id
    limit :limit offset :offset
)
select
    cast(i.id as text) as id, i.customer_id, i.customer_name, i.user_id, i.partition_date,
    i.last_seen_date, i.category, i.type, i.subject, i.priority, i.score, i.title, i.summary,
    cast(i.evidence as text) as evidence, i.so_what,
    cast(i.recommended_action as text) as recommended_action, i.fingerprint,
    cast(i.score_parts as text) as score_parts, i.status, i.feedback, i.snoozed_until,
    i.expires_at, i.created_at, i.viewed_at, i.actioned_at,
    owner_user.name as user_name, p.shared_by, sharer.name as shared_by_name, p.share_note,
    p.shared_at, p.unread, p.total_count, p.unread_count
from page as p
join insights as i on i.id = p.id
left join users as owner_user on owner_user.user_id = i.user_id
left join users as sharer on sharer.user_id = p.shared_by
order by p.priority_rank, p.score desc, p.partition_date desc, p.id
