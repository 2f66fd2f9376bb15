-- The daily history of one rollup row (a grouping, scope and group) over a day range: what the
-- leader view charts (open insights over time) and what week-over-week reads.
select
    rollup_date, open_insights, open_high, arr_at_risk, expansion_arr, raised_7d
from team_rollups
where group_by = cast(:group_by as text)
    and scope_id = cast(:scope_id as text)
    and group_key = cast(:group_key as text)
    and rollup_date between cast(:first_day as date) and cast(:last_day as date)
order by rollup_date
