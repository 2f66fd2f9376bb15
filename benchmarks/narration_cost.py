"""What Claude narratives cost, measured on generated data without calling the real API.

    .venv/bin/python benchmarks/narration_cost.py --accounts 300 --days 14

Generates a sample source, runs the whole Dagster graph for the last `--days` partitions as one
run with the Claude narrator pointed at the local fake Messages API
(`insight_pipeline_tests/fake_messages_api.py`), then runs the same range again. The fake server
answers each request with the template narrative of that very insight (placeholders for the
names), i.e. an answer of realistic length that the validator usually accepts, and reports
usage the way the API does — but counted with `estimate_tokens` (1 token per 3 characters):
Claude's tokenizer is not public and no network is available, so token counts are estimates.
English prose is nearer 3.5-4 characters per token and dense JSON with digits nearer 2.5-3, so
treat the figures as within about +-25%. Structured outputs add a few hundred tokens of system
prompt on the API side that no local count can see; the script reports it as a separate line.

Prints, per 1,000 narrated insights: requests, input and output tokens, and the cost at the
resource's default prices; and what the re-run cost (the cache should make it zero).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from insight_pipeline.definitions import ALL_ASSETS  # noqa: E402
from insight_pipeline.defs.resources import (  # noqa: E402
    NarratorResource,
    PolarsParquetIOManager,
    SettingsResource,
    SourceResource,
    StoreResource,
)
from insight_pipeline.lib.insights.narrate import TemplateNarrator  # noqa: E402
from insight_pipeline.sample import generate_sample  # noqa: E402
from insight_pipeline_tests.fake_messages_api import (  # noqa: E402
    FakeMessagesAPI,
    Reply,
    message,
    payload_of,
)

#: Assumed size of the structured-output scaffolding the API adds to the prompt (tokens).
STRUCTURED_OUTPUT_OVERHEAD = 300


def template_answer(request: dict[str, Any]) -> Reply:
    """The template narrative of the requested insight, rendered with the placeholders."""
    payload = payload_of(request)
    account = payload["account"]
    context = {
        "type": payload["insight_type"],
        "category": payload["category"],
        "subject": "",
        "customer_name": "ACCOUNT",
        "segment": account.get("segment") or "",
        "industry": account.get("industry") or "",
        "arr": account.get("arr_usd"),
        "renewal_date": account.get("renewal_date"),
        "days_to_renewal": account.get("days_to_renewal"),
        "facts": payload["facts"],
        "f": payload["facts"],
        "base_rate": payload.get("base_rate"),
        "evidence": payload.get("evidence") or [],
    }
    (text,) = TemplateNarrator().narrate([context])
    return message(request, json.dumps(text))


def materialize(resources: dict[str, Any], first: date, last: date) -> dict[str, Any]:
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, resources=resources, tags=tags, instance=instance)
        assert result.success
        (event,) = [
            e
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "insights"
        ][:1]
        meta = event.materialization.metadata
    return {k.removeprefix("narration_"): v.value for k, v in meta.items() if "narration_" in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--history", type=int, default=200)
    args = parser.parse_args()
    end = date(2026, 6, 30)
    first = end - timedelta(days=args.days - 1)
    with tempfile.TemporaryDirectory() as tmp, FakeMessagesAPI(template_answer) as api:
        work = Path(tmp)
        generate_sample(
            work / "sample", accounts=args.accounts, days=args.history, seed=11, end_date=end
        )
        os.environ["ANTHROPIC_API_KEY"] = "fake-key"
        resources = {
            "source": SourceResource(location=str(work / "sample")),
            "store": StoreResource(url=f"duckdb:///{work / 'insights.duckdb'}"),
            "narrator": NarratorResource(base_url=api.url, max_retries=0, concurrency=8),
            "settings": SettingsResource(),
            "io_manager": PolarsParquetIOManager(base_dir=str(work / "intermediate")),
        }
        stats = materialize(resources, first, end)
        types = Counter(payload_of(r)["insight_type"] for r in api.requests)
        hits_after_first = api.hits
        rerun = materialize(resources, first, end)

    items = max(1, stats["items"])
    per_k = 1000 / items
    tokens_in = stats["input_tokens"] * per_k
    tokens_out = stats["output_tokens"] * per_k
    calls = stats["api_calls"] * per_k
    with_overhead = tokens_in + STRUCTURED_OUTPUT_OVERHEAD * calls
    cost = (tokens_in * 3 + tokens_out * 15) / 1e6
    cost_overhead = (with_overhead * 3 + tokens_out * 15) / 1e6
    print(f"accounts={args.accounts} partitions={args.days} narrated insights={stats['items']}")
    print(f"types asked: {dict(types.most_common())}")
    print(f"first run: {json.dumps(stats, default=str)}")
    print(
        f"re-run: api_calls={rerun.get('api_calls')} cache_hits={rerun.get('cache_hits')} "
        f"items={rerun.get('items')} server hits {hits_after_first} -> {api.hits}"
    )
    print(
        f"per 1,000 insights: {calls:,.0f} requests, {tokens_in:,.0f} input tokens "
        f"({tokens_in / max(calls, 1):,.0f}/request), {tokens_out:,.0f} output tokens "
        f"({tokens_out / max(calls, 1):,.0f}/request)"
    )
    print(
        f"cost per 1,000 insights at $3/$15 per 1M tokens: ${cost:.2f} "
        f"(${cost_overhead:.2f} with {STRUCTURED_OUTPUT_OVERHEAD} tokens of structured-output "
        "overhead per request)"
    )


if __name__ == "__main__":
    main()
