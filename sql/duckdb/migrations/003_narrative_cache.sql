-- 003_narrative_cache: validated Claude narratives keyed by a hash of everything their prompt
-- held (type, evidence, facts, account context, base rate, prompt version and text, model), so
-- re-running a partition or meeting the same pattern again costs no API call.
-- Texts keep the name placeholders the model saw (ACCOUNT, CONTACT_A): real names are filled
-- in when a narrative is used, so this table holds no customer or contact name.
-- Token counts are those of the call that produced the narrative (what a hit saved).

create table narrative_cache (
    cache_key text primary key,
    insight_type text not null,
    model text not null,
    prompt_version text not null,
    title text not null,
    summary text not null,
    so_what text not null,
    action text not null,
    input_tokens integer not null default 0,
    output_tokens integer not null default 0,
    created_at timestamptz not null
);
