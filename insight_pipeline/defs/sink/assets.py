"""The sink: the insights plan written to the store in one transaction per run."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl
from sqlalchemy.engine import make_url

from insight_pipeline.defs.insights.assets import UPSERT_COLUMNS
from insight_pipeline.defs.metadata import counts_by, markdown_preview, partition_days
from insight_pipeline.defs.partitions import backfill_policy, daily_partitions
from insight_pipeline.defs.resources import StoreResource

GROUP = "sink"

#: A dropped connection, a terminated backend, a failover or a DuckDB file held by another
#: process fails the write whole (one transaction, rolled back) and the upsert is idempotent,
#: so running the step again is safe and usually all it takes (test_reliability_pipeline.py).
#: Waits 2, 4 and 8 s (with jitter), enough for a server restart or a lock to clear.
SINK_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    kinds={"duckdb", "postgres"},
    retry_policy=SINK_RETRY_POLICY,
)
def insights_table(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    insights: pl.DataFrame,
    accounts: pl.DataFrame,
) -> dg.MaterializeResult:
    """Upserts the plan into the insights table: new episodes inserted (or updated in place on a
    re-run, keeping every user column), open ones extended, and those of customers that churned
    by the run's last day closed on their churn day (`accounts` shows a churn only once it has
    happened), and those still open on the run's first day of an account whose CSM changed moved
    to its CSM now (an account's new owner sees them, the old one no longer does; as the first
    of a range's days run one by one would move them, those that lapse within the range too).
    All or nothing."""
    first, _last = partition_days(context)
    new = insights.filter(pl.col("action") == "insert").select(UPSERT_COLUMNS)
    extensions = insights.filter(pl.col("action") == "extend").select(
        "id", "last_seen_date", "expires_at"
    )
    churned = accounts.filter(pl.col("churned_on").is_not_null()).select(
        "customer_id", pl.col("churned_on").alias("churned_at")
    )
    owners = accounts.select("customer_id", pl.col("csm_user_id").alias("user_id"))
    as_of = datetime(first.year, first.month, first.day, tzinfo=UTC)
    with store.session() as db:
        written = db.write_insights(new, extensions, churned, owners, as_of)
        total = db.count_insights()
        url = make_url(db.url).render_as_string(hide_password=True)
    return dg.MaterializeResult(
        metadata={
            **{k: int(v) for k, v in written.items()},
            "table_rows": total,
            "store": url,
            "by_priority": counts_by(new, "priority"),
            "top_insights": markdown_preview(
                new.sort("score", descending=True),
                ["priority", "score", "customer_name", "type", "title"],
            ),
        }
    )
