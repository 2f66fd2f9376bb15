"""Resources: the source, the insights store, the narrator, the settings and the IO manager.

Each is chosen by configuration (a URL, an environment variable), never by `if env == "prod"`.
Empty strings mean "use the documented default" from `lib/paths.py`, resolved at run time.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from insight_pipeline.lib.contract import Source
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
    """Writes the title, summary, so-what and action of each new insight."""

    def narrator(self) -> Narrator:
        return TemplateNarrator()


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

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        directory = self._dir(context)
        directory.mkdir(parents=True, exist_ok=True)
        first, last = self._range(context)
        path = directory / f"{first}__{last}.parquet"
        tmp = path.with_suffix(".tmp")
        obj.write_parquet(tmp, compression="lz4")
        tmp.replace(path)  # atomic: a reader never sees half a file
        context.add_output_metadata({"path": str(path), "rows": obj.height})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        from datetime import date

        directory = self._dir(context)
        first, last = self._range(context)
        exact = directory / f"{first}__{last}.parquet"
        if exact.exists():
            return pl.read_parquet(exact)
        for path in sorted(directory.glob("*.parquet"), reverse=True):
            lo, hi = path.stem.split("__")
            if lo <= first and last <= hi:
                frame = pl.read_parquet(path)
                if "partition_date" in frame.columns:
                    frame = frame.filter(
                        pl.col("partition_date").is_between(
                            date.fromisoformat(first), date.fromisoformat(last)
                        )
                    )
                return frame
        raise FileNotFoundError(
            f"no stored output of {context.asset_key.to_user_string()} covers {first}...{last}; "
            "materialise its upstream assets for that range first"
        )
