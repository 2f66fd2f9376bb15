"""insight_pipeline: daily customer-success insights for every CSM, as Dagster assets."""

from insight_pipeline.allocators import keep_freed_pages_briefly

# before anything imports polars, whose allocator reads its setting once (see allocators.py)
keep_freed_pages_briefly()
