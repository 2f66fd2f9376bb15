-- Staging table for one write of quality metrics, filled by copy.
create temp table stage_insight_quality (
    quality_date date,
    window_days integer,
    scope text,
    scope_key text,
    acted integer,
    relevant integer,
    actioned integer,
    relevance_rate double precision,
    action_rate double precision
) on commit drop
