-- 005_ranking: what ranking adds to the store (issue #6).
-- insights.rank_in_day: the insight's rank among its CSM's new insights of its first day
-- (critical first, then score); insights.pushed: whether it was pushed (digest, notifications)
-- under the per-CSM daily cap and the push threshold. Rows written before ranking existed were
-- all delivered, hence the default true; rank_in_day stays null for them.
-- insight_quality: relevance and action rates per day, window, and scope (overall, a CSM, an
-- insight type), written by the insight_quality asset and read by the API.
-- PostgreSQL flavour, with an index for "what was pushed to whom on a day".

alter table insights add column pushed boolean not null default true;

alter table insights add column rank_in_day integer;

create index insights_pushed_idx on insights (partition_date, user_id) where pushed;

create table insight_quality (
    quality_date date not null,
    window_days integer not null,
    scope text not null check (scope in ('overall', 'user', 'type')),
    scope_key text not null,
    acted integer not null,
    relevant integer not null,
    actioned integer not null,
    relevance_rate double precision,
    action_rate double precision,
    computed_at timestamptz not null,
    primary key (quality_date, window_days, scope, scope_key)
);
