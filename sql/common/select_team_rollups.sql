-- One grouping of the team rollups on the latest day on or before the given one (the newest
-- when no day is given), limited to the groups and the scope the caller may see (all_keys for
-- every group; a null scope_id for every scope). lib/access.py decides who may see what.
select
    rollup_date, group_by, scope_id, group_key, label, accounts, arr_total, open_insights,
    open_high, open_medium, open_low, cast(open_by_category as text) as open_by_category,
    raised_7d, risk_accounts, arr_at_risk, arr_with_open_risk, opportunity_accounts,
    expansion_arr, acted, relevant, actioned, relevance_rate, action_rate, actions_timed,
    median_hours_to_action, open_insights_prev, arr_at_risk_prev
from team_rollups
where group_by = cast(:group_by as text)
    and rollup_date = (
        select max(latest.rollup_date)
        from team_rollups as latest
        where latest.group_by = cast(:group_by as text)
            and (cast(:day as date) is null or latest.rollup_date <= cast(:day as date))
    )
    and (cast(:all_keys as boolean) or group_key in :keys)
    and (cast(:scope_id as text) is null or scope_id = cast(:scope_id as text))
order by scope_id, group_key
