"""Resources: the source, the insights store, the narrator, the settings and the IO manager.

Each is chosen by configuration (a URL, an environment variable), never by `if env == "prod"`.
Empty strings mean "use the documented default" from `lib/paths.py`, resolved at run time.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from insight_pipeline.lib.contract import Source
from insight_pipeline.lib.insights.claude import (
    DEFAULT_MODEL,
    ClaudeNarrator,
    ClaudeSettings,
    NarrativeCache,
    resolve_api_key,
)
from insight_pipeline.lib.insights.narrate import Narrator, TemplateNarrator
from insight_pipeline.lib.paths import default_database_url, default_source, intermediate_dir
from insight_pipeline.lib.settings import Settings
from insight_pipeline.lib.store import InsightStore


class SourceResource(dg.ConfigurableResource):
    """The contract's source tables: a directory of Parquet/CSV files or a SQLAlchemy URL."""

    location: str = Field(
        default="", description="Directory or SQLAlchemy URL; empty = $INSIGHTS_SOURCE or sample."
    )

    def open(self) -> Source:
        return Source(self.location or default_source())


class StoreResource(dg.ConfigurableResource):
    """The insights store (PostgreSQL in production, a DuckDB file by default)."""

    url: str = Field(
        default="",
        description="SQLAlchemy URL; empty = $INSIGHTS_DATABASE_URL or the embedded DuckDB file.",
    )

    def open(self) -> InsightStore:
        store = InsightStore(self.url or default_database_url())
        store.migrate()
        return store


class NarratorResource(dg.ConfigurableResource):
    """Writes the title, summary, so-what and action of each new insight: Claude when an API key
    is available at run time (grounded, validated, cached; see lib/insights/claude.py), else the
    Jinja2 templates, which also stand in for every narrative Claude cannot deliver."""

    use_claude: bool = Field(
        default=True, description="Use Claude when an API key is available; false = templates."
    )
    api_key: str = Field(
        default="",
        description="Empty = $ANTHROPIC_API_KEY at run time; set via dg.EnvVar, never literally.",
    )
    base_url: str = Field(
        default="", description="Empty = $ANTHROPIC_BASE_URL or the SDK default, as the SDK does."
    )
    model: str = Field(default=DEFAULT_MODEL, description="Claude model id.")
    max_tokens: int = Field(default=600, description="Output tokens per request (cap).")
    temperature: float | None = Field(
        default=None,
        description="None = the API default; models after Opus 4.6 reject other values.",
    )
    concurrency: int = Field(default=4, description="Requests in flight at once.")
    max_calls_per_run: int = Field(
        default=1000, description="Budget: API requests per run (retries included); then templates."
    )
    max_tokens_per_run: int = Field(
        default=2_000_000, description="Budget: input + output tokens per run; then templates."
    )
    timeout_seconds: float = Field(default=30.0, description="Per request, per attempt.")
    max_retries: int = Field(
        default=3, description="SDK retries of 429/5xx/connection errors, with backoff."
    )
    input_usd_per_mtok: float = Field(
        default=3.0, description="Price of 1M input tokens, for the cost estimate only."
    )
    output_usd_per_mtok: float = Field(
        default=15.0, description="Price of 1M output tokens, for the cost estimate only."
    )

    def narrator(self, cache: NarrativeCache | None = None) -> Narrator:
        """The narrator for this run; `cache` (the opened store) lets Claude skip known prompts.

        The key is resolved here, at run time, so setting ANTHROPIC_API_KEY needs no redeploy."""
        api_key = resolve_api_key(self.api_key)
        if not (self.use_claude and api_key):
            return TemplateNarrator()
        settings = ClaudeSettings(
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            concurrency=self.concurrency,
            max_calls_per_run=self.max_calls_per_run,
            max_tokens_per_run=self.max_tokens_per_run,
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            input_usd_per_mtok=self.input_usd_per_mtok,
            output_usd_per_mtok=self.output_usd_per_mtok,
        )
        return ClaudeNarrator(
            settings, api_key=api_key, base_url=self.base_url or None, cache=cache
        )


class SettingsResource(dg.ConfigurableResource):
    """Every threshold (see lib/settings.py for names and defaults), overridable per run."""

    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Nested overrides, e.g. {"usage": {"z_threshold": 2.5}}.',
    )

    def settings(self) -> Settings:
        return Settings.from_dict(self.overrides)


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Intermediate polars frames as Parquet, one file per asset and partition range.

    A downstream asset run for a sub-range of what was materialised reads the covering file and
    keeps its rows (by `partition_date`, when the frame has one).
    """

    base_dir: str = Field(default="", description="Empty = <data dir>/intermediate.")

    def _dir(self, context: dg.InputContext | dg.OutputContext) -> Any:
        from pathlib import Path

        root = Path(self.base_dir) if self.base_dir else intermediate_dir()
        return root.joinpath(*context.asset_key.path)

    @staticmethod
    def _range(context: dg.InputContext | dg.OutputContext) -> tuple[str, str]:
        keys = context.asset_partition_keys
        return min(keys), max(keys)

    def handle_output(
        self, context: dg.OutputContext, obj: pl.DataFrame | dict[str, pl.DataFrame]
    ) -> None:
        """A frame -> `<first>__<last>.parquet`; a dict of frames (a bundle of source tables)
        -> a folder `<first>__<last>/` with one file per key. Written aside, then renamed."""
        import shutil

        directory = self._dir(context)
        directory.mkdir(parents=True, exist_ok=True)
        first, last = self._range(context)
        if isinstance(obj, dict):
            path = directory / f"{first}__{last}"
            tmp = directory / f".{first}__{last}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for key, frame in obj.items():
                frame.write_parquet(tmp / f"{key}.parquet", compression="lz4")
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
            rows = {key: frame.height for key, frame in obj.items()}
            context.add_output_metadata({"path": str(path), "rows": rows})
            return
        path = directory / f"{first}__{last}.parquet"
        tmp = path.with_suffix(".tmp")
        obj.write_parquet(tmp, compression="lz4")
        tmp.replace(path)  # atomic: a reader never sees half a file
        context.add_output_metadata({"path": str(path), "rows": obj.height})

    @staticmethod
    def _read(path: Any) -> pl.DataFrame | dict[str, pl.DataFrame]:
        if path.is_dir():
            return {f.stem: pl.read_parquet(f) for f in sorted(path.glob("*.parquet"))}
        return pl.read_parquet(path)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        from datetime import date

        directory = self._dir(context)
        first, last = self._range(context)
        for exact in (directory / f"{first}__{last}.parquet", directory / f"{first}__{last}"):
            if exact.exists():
                return self._read(exact)
        candidates = [p for p in directory.glob("*__*") if not p.name.startswith(".")]
        for path in sorted(candidates, reverse=True):
            lo, hi = path.name.removesuffix(".parquet").split("__")
            if lo <= first and last <= hi:
                stored = self._read(path)
                if isinstance(stored, pl.DataFrame) and "partition_date" in stored.columns:
                    stored = stored.filter(
                        pl.col("partition_date").is_between(
                            date.fromisoformat(first), date.fromisoformat(last)
                        )
                    )
                return stored
        raise FileNotFoundError(
            f"no stored output of {context.asset_key.to_user_string()} covers {first}...{last}; "
            "materialise its upstream assets for that range first"
        )
