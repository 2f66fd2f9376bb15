-- 005_ranking: what ranking adds to the store (issue #6).
-- insights.rank_in_day: the insight's rank among its CSM's new insights of its first day
-- (critical first, then score); insights.pushed: whether it was pushed (digest, notifications)
-- under the per-CSM daily cap and the push threshold. Rows written before ranking existed were
-- all delivered, hence the default true; rank_in_day stays null for them.
-- insight_quality: relevance and action rates per day, window, and scope (overall, a CSM, an
-- insight type), written by the insight_quality asset and read by the API.
-- DuckDB flavour: no secondary index (see 001: scans are fast and updates stay cheap).

alter table insights add column pushed boolean default true;

alter table insights add column rank_in_day integer;

create table insight_quality (
    quality_date date not null,
    window_days integer not null,
    scope text not null check (scope in ('overall', 'user', 'type')),
    scope_key text not null,
    acted integer not null,
    relevant integer not null,
    actioned integer not null,
    relevance_rate double,
    action_rate double,
    computed_at timestamptz not null,
    primary key (quality_date, window_days, scope, scope_key)
);
