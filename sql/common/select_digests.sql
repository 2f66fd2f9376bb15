-- The ledger rows of digests dated within [first_day, last_day], for run metadata and tests.
select
    user_id, digest_date, kind, message_id, recipient, subject, item_count, status, attempts,
    last_error, claimed_at, created_at, sent_at
from digests
where digest_date between cast(:first_day as date) and cast(:last_day as date)
order by digest_date, user_id, kind
