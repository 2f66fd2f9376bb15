-- 006_team: the daily team rollups (issue #8), written by the team_rollups asset, read by the
-- API's GET /api/team/rollups and the feed's leader view.
-- One row per day, grouping (csm, manager, segment, total), scope and group. scope_id is '*'
-- for rows over everyone (leaders; and the csm and manager rows, which a manager sees when the
-- group is in their team); segment rows exist once per manager too, over that manager's team
-- only, so a manager never sees numbers of accounts outside it.
-- Metrics as of the end of rollup_date (status from the feedback history, so re-running an old
-- day gives the same row); open_by_category is {category: {priority: count}}.
-- Team insights themselves go into the insights table (customer_id null, category team): no
-- change there, customer_id has always been nullable.
-- PostgreSQL flavour, with an index for one group's history (the leader view's charts).

create table team_rollups (
    rollup_date date not null,
    group_by text not null check (group_by in ('csm', 'manager', 'segment', 'total')),
    scope_id text not null,
    group_key text not null,
    label text,
    accounts integer not null,
    arr_total double precision not null,
    open_insights integer not null,
    open_high integer not null,
    open_medium integer not null,
    open_low integer not null,
    open_by_category jsonb not null,
    raised_7d integer not null,
    risk_accounts integer not null,
    arr_at_risk double precision not null,
    arr_with_open_risk double precision not null,
    opportunity_accounts integer not null,
    expansion_arr double precision not null,
    acted integer not null,
    relevant integer not null,
    actioned integer not null,
    relevance_rate double precision,
    action_rate double precision,
    actions_timed integer not null,
    median_hours_to_action double precision,
    open_insights_prev integer not null,
    arr_at_risk_prev double precision not null,
    computed_at timestamptz not null,
    primary key (rollup_date, group_by, scope_id, group_key)
);

create index team_rollups_history_idx on team_rollups (group_by, scope_id, group_key, rollup_date);
