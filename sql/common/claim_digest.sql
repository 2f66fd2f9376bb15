-- Claim a digest for sending: only if it was never sent and no live claim holds it (a claim
-- older than stale_before is an abandoned run). Returns the Message-ID to send it with and
-- the attempts so far; no row means someone else sent it or is sending it.
update digests
set
    status = 'queued',
    claimed_at = cast(:now as timestamptz),
    recipient = cast(:recipient as text),
    subject = cast(:subject as text),
    item_count = cast(:item_count as integer)
where user_id = cast(:user_id as text)
    and digest_date = cast(:digest_date as date)
    and kind = cast(:kind as text)
    and status <> 'sent'
    and (claimed_at is null or claimed_at < cast(:stale_before as timestamptz))
returning message_id, attempts
