"""Resources: the source, the insights store, the narrator, the settings and the IO manager.

Each is chosen by configuration (a URL, an environment variable), never by `if env == "prod"`.
Empty strings mean "use the documented default" from `lib/paths.py`, resolved at run time.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from insight_pipeline.allocators import (
    release_freed_memory,
    restore_allocator,
    retain_freed_memory,
)
from insight_pipeline.defs.sharding import (
    PARTS_METADATA,
    SHARD_DIMENSION,
    FrameParts,
    FrameStream,
    TableStream,
)
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

    @contextmanager
    def session(self) -> Iterator[InsightStore]:
        """`open()` for a few store calls in a row, disposed at the end: the migration check and
        the calls share one connection (`InsightStore.session`), so a DuckDB file is opened
        once, not once per call. Keep long computation out of the block (the file is held)."""
        store = InsightStore(self.url or default_database_url())
        try:
            with store.session():
                store.migrate()
                yield store
        finally:
            store.dispose()


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
    keeps its rows (by `partition_date`, when the frame has one). Outputs may also be a
    `FrameStream` (written part by part, never whole in memory) or a `pl.LazyFrame` (streamed to
    the file); an input annotated `pl.LazyFrame` gets a lazy scan of the file instead of a read,
    so the asset can take it one account shard at a time (see `defs/sharding.py`).
    """

    base_dir: str = Field(default="", description="Empty = <data dir>/intermediate.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A range run keeps the large blocks its steps free for reuse (see allocators.py)."""
        tags = context.dagster_run.tags if context.dagster_run is not None else {}
        first = tags.get("dagster/asset_partition_range_start")
        if first is not None and first != tags.get("dagster/asset_partition_range_end"):
            retain_freed_memory()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        restore_allocator()

    def _dir(self, context: dg.InputContext | dg.OutputContext) -> Any:
        from pathlib import Path

        root = Path(self.base_dir) if self.base_dir else intermediate_dir()
        directory = root.joinpath(*context.asset_key.path)
        shard = _shard_keys(context)[0]
        return directory / f"{SHARD_DIMENSION}={shard}" if shard is not None else directory

    @staticmethod
    def _range(context: dg.InputContext | dg.OutputContext) -> tuple[str, str]:
        days = _shard_keys(context)[1]
        return min(days), max(days)

    def handle_output(
        self,
        context: dg.OutputContext,
        obj: pl.DataFrame | pl.LazyFrame | FrameStream | TableStream | dict[str, pl.DataFrame],
    ) -> None:
        """A frame -> `<first>__<last>.parquet`; a dict of frames or a `TableStream` (a bundle
        of source tables) -> a folder `<first>__<last>/` with one file per key. Written aside,
        then renamed. What the step freed goes back to the OS after (see allocators.py)."""
        try:
            self._write(context, obj)
        finally:
            release_freed_memory()

    def _write(
        self,
        context: dg.OutputContext,
        obj: pl.DataFrame | pl.LazyFrame | FrameStream | TableStream | dict[str, pl.DataFrame],
    ) -> None:
        import shutil

        directory = self._dir(context)
        directory.mkdir(parents=True, exist_ok=True)
        first, last = self._range(context)
        if isinstance(obj, dict | TableStream):
            path = directory / f"{first}__{last}"
            tmp = directory / f".{first}__{last}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            table_rows: dict[str, int] = {}
            for key, frame in obj.items() if isinstance(obj, dict) else obj.tables:
                if isinstance(frame, FrameStream):  # a large table, part by part
                    table_rows[key] = _write_parts(tmp / f"{key}.parquet", frame)
                    continue
                frame.write_parquet(tmp / f"{key}.parquet", compression="lz4")
                table_rows[key] = frame.height
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
            metadata = obj.metadata if isinstance(obj, TableStream) else {}
            context.add_output_metadata({**metadata, "path": str(path), "rows": table_rows})
            return
        path = directory / f"{first}__{last}.parquet"
        tmp = path.with_suffix(".tmp")
        metadata: dict[str, Any] = {}
        if isinstance(obj, FrameStream):
            rows = _write_parts(tmp, obj)
            metadata = obj.metadata
        elif isinstance(obj, pl.LazyFrame):
            obj.sink_parquet(tmp, compression="lz4")
            rows = pl.scan_parquet(tmp).select(pl.len()).collect().item()
        else:
            obj.write_parquet(tmp, compression="lz4")
            rows = obj.height
        tmp.replace(path)  # atomic: a reader never sees half a file
        context.add_output_metadata({**metadata, "path": str(path), "rows": rows})

    @staticmethod
    def _read(
        path: Any, lazy: bool, tables: list[str] | None = None, scanned: Sequence[str] = ()
    ) -> pl.DataFrame | pl.LazyFrame | dict[str, pl.DataFrame | pl.LazyFrame]:
        """A file as a frame (or a scan); a bundle folder as a dict of frames, only the
        `tables` asked for (`AssetIn(metadata={"tables": [...]})`) when the input names them,
        the `scanned` ones as lazy scans."""
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if tables is not None:
                missing = set(tables) - {f.stem for f in files}
                if missing:
                    raise KeyError(f"{path} holds no table(s) {sorted(missing)}")
                files = [f for f in files if f.stem in tables]
            return {
                f.stem: pl.scan_parquet(f) if f.stem in scanned else pl.read_parquet(f)
                for f in files
            }
        return pl.scan_parquet(path) if lazy else pl.read_parquet(path)

    def load_input(
        self, context: dg.InputContext
    ) -> pl.DataFrame | pl.LazyFrame | FrameParts | dict[str, pl.DataFrame]:
        from datetime import date

        directory = self._dir(context)
        first, last = self._range(context)
        wanted = getattr(context.dagster_type, "typing_type", None)
        lazy = wanted in (pl.LazyFrame, FrameParts)
        tables = (context.definition_metadata or {}).get("tables")
        scanned = (context.definition_metadata or {}).get("scanned") or ()
        for exact in (directory / f"{first}__{last}.parquet", directory / f"{first}__{last}"):
            if exact.exists():
                if wanted is FrameParts:
                    return _as_parts(exact)
                return self._read(exact, lazy, tables, scanned)
        candidates = [p for p in directory.glob("*__*") if not p.name.startswith(".")]
        for path in sorted(candidates, reverse=True):
            lo, hi = path.name.removesuffix(".parquet").split("__")
            if lo <= first and last <= hi:
                stored = self._read(path, lazy, tables, scanned)
                days = None
                if isinstance(stored, pl.DataFrame | pl.LazyFrame) and (
                    "partition_date" in stored.collect_schema().names()
                ):
                    days = pl.col("partition_date").is_between(
                        date.fromisoformat(first), date.fromisoformat(last)
                    )
                    stored = stored.filter(days)
                return _as_parts(path, days) if wanted is FrameParts else stored
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
        stitched = _stitch(directory, first, last, lazy, allow_missing)
        if stitched is not None:
            if wanted is FrameParts:
                return FrameParts(
                    stitched if isinstance(stitched, pl.LazyFrame) else stitched.lazy()
                )
            return stitched
        raise FileNotFoundError(
            f"no stored output of {context.asset_key.to_user_string()} covers {first}...{last}; "
            "materialise its upstream assets for that range first"
        )


def _stitch(
    directory: Any, first: str, last: str, lazy: bool, allow_missing: bool
) -> pl.DataFrame | pl.LazyFrame | None:
    """A look-back input (`TimeWindowPartitionMapping(start_offset=-13)`: days D-13..D) spans
    days that different runs stored in different files, so no single file covers it: each day is
    taken from the newest file holding it (the latest materialisation), by `partition_date`.

    None when some day is in no file, unless the input allows missing partitions
    (`AssetIn(metadata={"allow_missing_partitions": True})`, Dagster's own convention): then
    those days are simply absent - the days before the first run ever, say - and with no file at
    all the frame is empty (no columns: the reader must cope).
    """
    from datetime import date, timedelta

    lo_day, hi_day = date.fromisoformat(first), date.fromisoformat(last)
    files = []
    for path in directory.glob("*__*.parquet") if directory.exists() else []:
        if path.name.startswith("."):
            continue
        lo, hi = path.name.removesuffix(".parquet").split("__")
        if lo <= last and first <= hi:
            files.append((path.stat().st_mtime_ns, path.name, path, lo, hi))
    taken: set[date] = set()
    parts = []
    for _mtime, _name, path, lo, hi in sorted(files, reverse=True):
        start = max(date.fromisoformat(lo), lo_day)
        days = [
            start + timedelta(days=i)
            for i in range((min(date.fromisoformat(hi), hi_day) - start).days + 1)
        ]
        days = [d for d in days if d not in taken]
        if not days:
            continue
        scan = pl.scan_parquet(path)
        if "partition_date" not in scan.collect_schema().names():
            return None  # not a daily frame: stitching would mix runs
        parts.append(scan.filter(pl.col("partition_date").is_in(days)))
        taken.update(days)
    if len(taken) < (hi_day - lo_day).days + 1 and not allow_missing:
        return None
    if not parts:
        return pl.LazyFrame() if lazy else pl.DataFrame()
    frame = pl.concat(parts, how="diagonal_relaxed")
    return frame if lazy else frame.collect()


def _write_parts(path: Any, stream: FrameStream) -> int:
    """Append each part of `stream` to one Parquet file, recording each part's row count in the
    file's metadata so that a reader can take one part's slice; returns the rows.

    The parts go through polars' streaming Parquet sink (a Python source feeding it one part at a
    time), about twice as fast as pyarrow's writer on the same frames (45M usage rows: 2.6 s
    against 5 s); the part heights are written as the file is closed. The sink runs in its own
    thread (it pulls the parts from one of polars' threads anyway) while this one waits, so that
    Dagster can still interrupt the step: the parts stop being produced and the write fails."""
    import json
    import threading

    from polars.io.plugins import register_io_source

    parts = iter(stream.parts)
    first = next(parts, None)
    if first is None:
        pl.DataFrame(schema=stream.schema).write_parquet(path, compression="lz4")
        return 0
    schema = first.schema
    heights: list[int] = []
    cancelled = threading.Event()
    calls = 0

    def frames(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _: Any
    ) -> Iterator[pl.DataFrame]:
        """The parts, in the first one's columns and types (a part with no rows of a column may
        have inferred another type); a sink asks for all rows and columns, a scan may not."""
        nonlocal first, calls
        calls += 1
        if calls > 1:  # the parts are a one-shot generator: a second pass would write nothing
            raise RuntimeError("a FrameStream's parts were asked for twice")
        part, first = first, None
        while part is not None:
            heights.append(part.height)
            frame = part if part.schema == schema else part.select(schema.names()).cast(schema)
            part = None  # not held while the next part is produced
            if predicate is not None:
                frame = frame.filter(predicate)
            yield frame if with_columns is None else frame.select(with_columns)
            del frame
            if cancelled.is_set():
                raise RuntimeError("the write was interrupted")
            release_freed_memory()  # the last part's arrays, before the next part is computed
            part = next(parts, None)

    failure: list[BaseException] = []

    def sink() -> None:
        try:
            register_io_source(frames, schema=schema).sink_parquet(
                path,
                compression="lz4",
                metadata=lambda _: {PARTS_METADATA: json.dumps(heights)},
            )
        except BaseException as exc:  # handed to the waiting thread, which raises it
            failure.append(exc)

    writer = threading.Thread(target=sink, name="frame-stream-writer")
    writer.start()
    try:
        while writer.is_alive():
            writer.join(0.2)
    except BaseException:  # an interrupt: no further part is produced, then it goes on up
        cancelled.set()
        writer.join()
        raise
    if failure:
        raise failure[0]
    return sum(heights)


def _as_parts(path: Any, where: pl.Expr | None = None) -> FrameParts:
    """A stored frame as `FrameParts`: its recorded parts, or none (then cut by customer hash)."""
    import json

    if path.is_dir():
        raise TypeError(f"{path} is a bundle of frames, not one frame to read in parts")
    recorded = pl.read_parquet_metadata(path).get(PARTS_METADATA)
    heights = json.loads(recorded) if recorded else None
    return FrameParts(pl.scan_parquet(path), heights, where)


def _shard_keys(context: dg.InputContext | dg.OutputContext) -> tuple[str | None, list[str]]:
    """(account shard or None, the day keys) of the partitions an output or input covers: date x
    shard partitions are stored per shard (one folder each), by date range inside it."""
    keys = list(context.asset_partition_keys)
    partitions = context.asset_partitions_def
    if not isinstance(partitions, dg.MultiPartitionsDefinition):
        return None, keys
    time_dimension = partitions.time_window_dimension.name
    parsed = [partitions.get_partition_key_from_str(key).keys_by_dimension for key in keys]
    shards = {k[SHARD_DIMENSION] for k in parsed}
    if len(shards) != 1:
        raise dg.DagsterInvariantViolationError(
            f"{context.asset_key.to_user_string()}: one account shard per run, not {sorted(shards)}"
        )
    return shards.pop(), [k[time_dimension] for k in parsed]
