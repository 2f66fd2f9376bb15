-- Record the outcome of one claimed send: sent (with its time) or failed (with the error);
-- attempts accumulate across runs and the claim is released.
update digests
set
    status = cast(:status as text),
    attempts = attempts + cast(:attempts as integer),
    last_error = cast(:last_error as text),
    sent_at = cast(:sent_at as timestamptz),
    claimed_at = null
where user_id = cast(:user_id as text)
    and digest_date = cast(:digest_date as date)
    and kind = cast(:kind as text)
    and status <> 'sent'
