"""Dagster definitions, one folder per domain in the order data flows."""

import warnings

import dagster as dg

# backfill_policy, multi-asset checks and partitioned checks are beta/preview APIs we rely on
# deliberately (single-run range backfills); their warnings would drown the UI's logs.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
