-- Keep one validated narrative; a key already there (another run wrote it first) is left alone.
insert into narrative_cache (
    cache_key, insight_type, model, prompt_version, title, summary, so_what, action,
    input_tokens, output_tokens, created_at
)
values (
    :cache_key, :insight_type, :model, :prompt_version, :title, :summary, :so_what, :action,
    :input_tokens, :output_tokens, :created_at
)
on conflict (cache_key) do nothing
