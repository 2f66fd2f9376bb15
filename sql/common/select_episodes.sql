-- Episodes the sink may continue: every insight last seen on or after the given day.
select
    cast(id as text) as id, fingerprint, partition_date, last_seen_date, status, expires_at
from insights
where last_seen_date >= :since
order by fingerprint, last_seen_date, id
