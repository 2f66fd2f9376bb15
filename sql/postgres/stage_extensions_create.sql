-- Staging table for one write's episode extensions, filled by copy.
create temp table stage_insight_extensions (
    id uuid,
    last_seen_date date,
    expires_at timestamptz
) on commit drop
