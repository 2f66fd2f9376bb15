-- Register a digest in the ledger as queued; an existing row (sent, failed or in flight) wins.
insert into digests (user_id, digest_date, kind, message_id, status, attempts, created_at)
values (
    :user_id, cast(:digest_date as date), :kind, :message_id, 'queued', 0,
    cast(:created_at as timestamptz)
)
on conflict (user_id, digest_date, kind) do nothing
