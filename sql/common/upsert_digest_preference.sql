-- A user's digest preference: daily, weekly on a weekday (0 = Monday), or off.
insert into digest_preferences (user_id, frequency, weekday, updated_at)
values (:user_id, :frequency, :weekday, cast(:updated_at as timestamptz))
on conflict (user_id) do update set
    frequency = excluded.frequency,
    weekday = excluded.weekday,
    updated_at = excluded.updated_at
