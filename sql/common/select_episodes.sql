-- Episodes the sink may continue, or that may explain a new echo (same account): every insight
-- last seen on or after the given day.
select
    cast(id as text) as id, fingerprint, partition_date, last_seen_date, status, expires_at,
    customer_id, category, type, subject, cast(score_parts as text) as score_parts
from insights
where last_seen_date >= :since
order by fingerprint, last_seen_date, id
