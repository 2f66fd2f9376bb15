-- Store the staged team rollups (the day range was deleted first, in the same transaction).
-- open_by_category arrives as jsonb (PostgreSQL staging) or as text DuckDB reads as json.
insert into team_rollups (
    rollup_date, group_by, scope_id, group_key, label, accounts, arr_total, open_insights,
    open_high, open_medium, open_low, open_by_category, raised_7d, risk_accounts, arr_at_risk,
    arr_with_open_risk, opportunity_accounts, expansion_arr, acted, relevant, actioned,
    relevance_rate, action_rate, actions_timed, median_hours_to_action, open_insights_prev,
    arr_at_risk_prev,
    computed_at
)
select
    rollup_date, group_by, scope_id, group_key, label, accounts, arr_total, open_insights,
    open_high, open_medium, open_low, open_by_category, raised_7d, risk_accounts, arr_at_risk,
    arr_with_open_risk, opportunity_accounts, expansion_arr, acted, relevant, actioned,
    relevance_rate, action_rate, actions_timed, median_hours_to_action, open_insights_prev,
    arr_at_risk_prev,
    cast(:computed_at as timestamptz)
from stage_team_rollups
