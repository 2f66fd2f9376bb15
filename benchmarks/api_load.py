"""Load benchmark of the insights API on PostgreSQL (loopback only; not run by the tests).

    .venv/bin/python benchmarks/api_load.py            # ~4-5 minutes on a 2-core machine

1. Creates a PostgreSQL database (default `insight_api_bench` on the local trust-auth server;
   `--postgres-url` for another), migrates it and loads, through the store's own bulk write,
   1,000,000 insights for 10,000 accounts and 50 CSMs (5 managers of 10, 1 leader) raised over
   a year, most long expired, with CSM actions on the older ones (about 7% are open, as the
   per-category TTLs make them in production).
2. Serves it with `insight-pipeline serve` (a separate process, `--workers` uvicorn workers).
3. With 50 concurrent clients (httpx, asyncio) on loopback, for --seconds each, measures
   GET /api/insights as a CSM (first page, filtered, deep offset), as a manager and as the
   leader, and POST /api/insights/{id}/action, while a bulk write (the sink re-upserting 50,000
   insights per transaction) runs in a loop. Latency is measured at the client (includes
   queueing behind the 50 clients) and by the server (`Server-Timing: app`, the time in the
   app: authentication, the feed's two queries, serialisation).
4. Prints a table and EXPLAIN (ANALYZE, BUFFERS) of the feed queries for a CSM, and writes both
   to benchmarks/api_load_results.md.

The benchmark's fixture setup (statuses of old insights) runs one UPDATE directly: it is test
data, not product code; everything the API does goes through the store.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
from sqlalchemy import String, bindparam, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from insight_pipeline.lib.access import FeedFilters, resolve_viewer  # noqa: E402
from insight_pipeline.lib.settings import Settings  # noqa: E402
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE  # noqa: E402
from insight_pipeline.lib.sql_files import load_sql  # noqa: E402
from insight_pipeline.lib.store import InsightStore  # noqa: E402

TTL = Settings().ranking.ttl_days
TYPES = [t for t, c in CATEGORY_OF_TYPE.items() if c != "team"]  # account-level types only
RESULTS = ROOT / "benchmarks" / "api_load_results.md"


# ------------------------------------------------------------------------------------ data


def directory(csms: int, per_manager: int) -> pl.DataFrame:
    managers = csms // per_manager
    rows = [("L00", "Leader", "leader", None)]
    rows += [(f"M{m:02d}", f"Manager {m}", "manager", "L00") for m in range(managers)]
    rows += [(f"C{c:02d}", f"CSM {c}", "csm", f"M{c // per_manager:02d}") for c in range(csms)]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "name": [r[1] for r in rows],
            "email": [f"{r[0].lower()}@example.com" for r in rows],
            "role": [r[2] for r in rows],
            "manager_id": [r[3] for r in rows],
        }
    )


def insights_chunk(
    start: int, n: int, accounts: int, csms: int, today: date, seed: int
) -> pl.DataFrame:
    """n insights numbered from `start`: a year of history, ids and fingerprints unique."""
    rng = np.random.default_rng(seed + start)
    account = rng.integers(0, accounts, n)
    type_idx = rng.integers(0, len(TYPES), n)
    types = np.array(TYPES)[type_idx]
    categories = np.array([CATEGORY_OF_TYPE[t] for t in TYPES])[type_idx]
    age = rng.integers(0, 365, n)
    seen = np.minimum(age, rng.integers(0, 12, n))
    score = np.round(rng.beta(2.0, 4.0, n), 4)
    priority = np.where(score >= 0.65, "high", np.where(score >= 0.4, "medium", "low"))
    ttl = np.array([TTL.get(c, 30) for c in categories])
    today_np = np.datetime64(today, "D")
    first = today_np - age
    last = today_np - (age - seen)
    expires = (last + ttl).astype("datetime64[us]")
    ids = [str(uuid.UUID(int=int(x))) for x in rng.integers(1, 2**62, n, dtype=np.int64)]
    numbers = np.arange(start, start + n)
    return pl.DataFrame(
        {
            "id": ids,
            "customer_id": [f"A{a:05d}" for a in account],
            "customer_name": [f"Account {a}" for a in account],
            "user_id": [f"C{a % csms:02d}" for a in account],
            "partition_date": first,
            "last_seen_date": last,
            "category": categories,
            "type": types,
            "subject": "dau",
            "priority": priority,
            "score": score,
            "title": [f"Insight {i}" for i in numbers],
            "summary": "Daily active users moved well outside their usual range.",
            "evidence": '[{"metric": "dau", "value": 12.0, "comparison": "baseline 20.0", '
            '"source": "usage_daily"}]',
            "so_what": "Accounts like this one renewed less often in the past year.",
            "recommended_action": '{"type": "Schedule a meeting", "description": "Call them.", '
            '"quick_action_id": "schedule_meeting"}',
            "fingerprint": [f"{i}" for i in numbers],
            "score_parts": '{"severity": 0.5, "impact": 0.4}',
            "expires_at": expires,
        }
    ).with_columns(
        pl.col("partition_date").cast(pl.Date),
        pl.col("last_seen_date").cast(pl.Date),
        pl.col("expires_at").dt.replace_time_zone("UTC"),
    )


ACT_ON_OLD = """
update insights set
    status = case
        when abs(hashtext(cast(id as text))) % 100 < 45 then 'viewed'
        when abs(hashtext(cast(id as text))) % 100 < 60 then 'dismissed'
        when abs(hashtext(cast(id as text))) % 100 < 70 then 'actioned'
        else 'new' end,
    viewed_at = created_at
where partition_date < current_date - 3
"""


def load(url: str, args: argparse.Namespace, today: date) -> InsightStore:
    base = make_url(url)
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'drop database if exists "{args.database}" with (force)'))
        conn.execute(text(f'create database "{args.database}"'))
    admin.dispose()
    bench_url = base.set(database=args.database).render_as_string(hide_password=False)
    store = InsightStore(bench_url, pool_size=4)
    store.migrate()
    store.sync_users(directory(args.csms, args.csms // args.managers))
    started = time.perf_counter()
    chunk = 100_000
    for start in range(0, args.insights, chunk):
        frame = insights_chunk(
            start, min(chunk, args.insights - start), args.accounts, args.csms, today, args.seed
        )
        store.write_insights(frame, pl.DataFrame())
        print(
            f"  loaded {start + frame.height:>9,d} insights "
            f"({time.perf_counter() - started:5.1f} s)",
            flush=True,
        )
    engine = create_engine(bench_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(ACT_ON_OLD))
        conn.execute(text("vacuum analyze"))
    engine.dispose()
    return store


# ------------------------------------------------------------------------------------ load


@dataclass
class Sample:
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    feed_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.array(values), q))


async def drive(
    base: str, clients: int, seconds: float, make_request, rng: random.Random
) -> Sample:
    sample = Sample()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        stop = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < stop:
                method, path, headers, body = make_request(rng)
                t0 = time.perf_counter()
                try:
                    response = await client.request(method, path, headers=headers, json=body)
                except httpx.HTTPError:
                    sample.errors += 1
                    continue
                took = (time.perf_counter() - t0) * 1000
                if response.status_code != 200:
                    sample.errors += 1
                    continue
                sample.client_ms.append(took)
                for metric in response.headers.get("server-timing", "").split(","):
                    name, _, rest = metric.strip().partition(";")
                    if "dur=" in rest:
                        took = float(rest.split("dur=")[1].split(";")[0])
                        (sample.server_ms if name == "app" else sample.feed_ms).append(took)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        sample.seconds = time.perf_counter() - started
    return sample


def bulk_write_loop(url: str, frame_path: str, stop: Any, durations: Any) -> None:
    """The sink, meanwhile: re-upserts 50,000 existing insights per transaction, in a loop.

    Runs in its own process, so it competes with the server for the machine as the real sink
    would, and not for the load generator's interpreter lock."""
    store = InsightStore(url, pool_size=1)
    base = pl.read_parquet(frame_path)
    rng = np.random.default_rng(1)
    try:
        while not stop.is_set():
            frame = base.with_columns(
                pl.Series("score", np.round(rng.beta(2.0, 4.0, base.height), 4))
            )
            t0 = time.perf_counter()
            store.write_insights(frame, pl.DataFrame())
            durations.append(time.perf_counter() - t0)
    finally:
        store.dispose()


class BulkWriter:
    """Starts and stops `bulk_write_loop` in a child process."""

    def __init__(self, url: str, frame: pl.DataFrame, work: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.manager = context.Manager()
        self.stop = self.manager.Event()
        self.shared = self.manager.list()
        path = work / "bulk_write.parquet"
        frame.write_parquet(path)
        self.process = context.Process(
            target=bulk_write_loop, args=(url, str(path), self.stop, self.shared), daemon=True
        )
        self.durations: list[float] = []

    def start(self) -> None:
        self.process.start()

    def finish(self) -> None:
        self.stop.set()
        if self.process.is_alive() or self.process.exitcode is None:
            if self.process.pid is not None:
                self.process.join(timeout=180)
        self.durations = list(self.shared)
        self.manager.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def explain(url: str, viewer_id: str, owner_ids: list[str]) -> str:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    params = {
        **FeedFilters().params(),
        "viewer_id": viewer_id,
        "all_users": False,
        "owner_ids": owner_ids,
        "read_all_at": None,
        "as_of": datetime.now(UTC),
        "limit": 20,
        "offset": 0,
    }
    out = []
    with engine.connect() as conn:
        for name in ("select_api_feed", "count_api_feed"):
            sql = "explain (analyze, buffers, costs off) " + load_sql(name, "postgresql")
            statement = text(sql).bindparams(bindparam("owner_ids", expanding=True, type_=String()))
            rows = conn.execute(statement, params).fetchall()
            out.append(f"-- {name} (CSM {viewer_id})\n" + "\n".join(r[0] for r in rows))
    engine.dispose()
    return "\n\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--database", default="insight_api_bench")
    parser.add_argument("--insights", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--csms", type=int, default=50)
    parser.add_argument("--managers", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    parser.add_argument("--no-writer", action="store_true", help="no bulk write meanwhile")
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    args = parser.parse_args()
    today = datetime.now(UTC).date()

    bench_url = make_url(args.postgres_url).set(database=args.database)
    bench = bench_url.render_as_string(hide_password=False)
    if args.reuse:
        store = InsightStore(bench, pool_size=4)
    else:
        print(f"loading {args.insights:,d} insights into {args.database} ...", flush=True)
        store = load(args.postgres_url, args, today)
    users = store.list_users()
    csm_ids = [u for u, r in zip(users["user_id"], users["role"], strict=True) if r == "csm"]
    manager_ids = [
        u for u, r in zip(users["user_id"], users["role"], strict=True) if r == "manager"
    ]
    token = {u: store.create_token(u, label="benchmark")[1] for u in users["user_id"]}
    opens = {}
    for csm in csm_ids:
        page = store.feed(resolve_viewer(store, store.get_user(csm)), limit=200)
        opens[csm] = page.rows["id"].to_list()
    open_counts = [len(v) for v in opens.values()]
    total_open = store.feed(resolve_viewer(store, store.get_user("L00")), limit=1).total
    print(
        f"{store.count_insights():,d} insights, {total_open:,d} open "
        f"(~{statistics.mean(open_counts):.0f} per CSM shown, capped at 200 here)",
        flush=True,
    )

    first_chunk = insights_chunk(
        0, min(100_000, args.insights), args.accounts, args.csms, today, args.seed
    )
    work = Path(tempfile.mkdtemp(prefix="api-load-"))
    writer = BulkWriter(bench, first_chunk.head(50_000), work)  # existing ids: updates, as the sink
    port = free_port()
    env = {**os.environ, "INSIGHTS_DATABASE_URL": bench, "INSIGHTS_SOURCE": ""}
    server_log = (work / "server.log").open("w")
    # a timeout or Ctrl-C must still stop the server: SIGTERM becomes SystemExit -> finally
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/insight-pipeline"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, Sample]] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        since = (today - timedelta(days=60)).isoformat()
        later = (datetime.now(UTC) + timedelta(days=7)).isoformat()

        def csm_get(query: str):
            def make(rng: random.Random):
                who = rng.choice(csm_ids)
                return "GET", f"/api/insights?{query}", auth(who), None

            return make

        def auth(who: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token[who]}"}

        def action(rng: random.Random):
            who = rng.choice(csm_ids)
            target = rng.choice(opens[who])
            if rng.random() < 0.5:
                body = {"action": "snooze", "snooze_until": later}
            else:
                body = {"action": "actioned", "feedback": "took_action"}
            return "POST", f"/api/insights/{target}/action", auth(who), body

        scenarios = [
            ("feed, first page (CSM)", csm_get("limit=20")),
            ("feed, filtered (CSM)", csm_get(f"category=usage&priority=high&from={since}")),
            ("feed, deep offset 1000 (CSM)", csm_get("limit=20&offset=1000")),
            (
                "feed, first page (manager, 10 CSMs)",
                lambda rng: ("GET", "/api/insights?limit=20", auth(rng.choice(manager_ids)), None),
            ),
            (
                "feed, first page (leader, all)",
                lambda rng: ("GET", "/api/insights?limit=20", auth("L00"), None),
            ),
            ("action (CSM)", action),
        ]
        asyncio.run(drive(base, args.clients, 3.0, scenarios[0][1], random.Random(0)))  # warm-up
        # the floor: one client, nothing else of ours running (what a single CSM sees)
        alone = asyncio.run(drive(base, 1, 5.0, scenarios[0][1], random.Random(99)))
        rows.append(("feed, first page (CSM), 1 client, no bulk write", alone))
        if not args.no_writer:
            writer.start()
        for i, (name, make) in enumerate(scenarios):
            if args.only not in name:
                continue
            sample = asyncio.run(drive(base, args.clients, args.seconds, make, random.Random(i)))
            rows.append((name, sample))
            print(f"  {name}: {len(sample.client_ms) / sample.seconds:.0f} req/s", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        writer.finish()
        server_log.close()
        if server.returncode not in (0, -signal.SIGTERM, None):
            print((work / "server.log").read_text()[-3000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    header = (
        f"| scenario ({args.clients} clients unless said, {args.seconds:.0f} s each) | req/s | "
        "client p50 ms | client p99 ms | app p50 ms | app p99 ms | feed query p50 ms | "
        "feed query p99 ms | errors |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for name, s in rows:
        lines.append(
            f"| {name} | {len(s.client_ms) / s.seconds:.0f} | {pct(s.client_ms, 50):.1f} | "
            f"{pct(s.client_ms, 99):.1f} | {pct(s.server_ms, 50):.1f} | "
            f"{pct(s.server_ms, 99):.1f} | {pct(s.feed_ms, 50):.1f} | {pct(s.feed_ms, 99):.1f} | "
            f"{s.errors} |"
        )
    bulk = writer.durations
    bulk_line = (
        f"Bulk writes during the run: {len(bulk)} x 50,000 re-upserted insights, "
        f"median {statistics.median(bulk):.1f} s each."
        if bulk
        else "No bulk write finished."
    )
    plan = explain(bench, csm_ids[0], [csm_ids[0]])
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at the end {load_avg} (other work on the machine counts here)"
    )
    report = "\n".join(lines)
    print("\n" + report + "\n\n" + bulk_line + "\n\n" + plan)
    RESULTS.write_text(
        "# API load benchmark (benchmarks/api_load.py)\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}; server: `insight-pipeline serve "
        f"--workers {args.workers}`, PostgreSQL on the same machine; "
        f"{store.count_insights():,d} insights, {total_open:,d} open; "
        f"{len(csm_ids)} CSMs, {len(manager_ids)} managers.\n\n"
        "Client latency includes queueing behind the other clients; `app` is the time inside "
        "the app (Server-Timing: authentication, queries, serialisation; excludes waiting for "
        "a worker); `feed query` is `store.feed` alone (the feed's page and count queries).\n\n"
        f"{report}\n\n{bulk_line}\n\n## EXPLAIN (ANALYZE, BUFFERS) of the feed for one CSM\n\n"
        f"```\n{plan}\n```\n",
        encoding="utf-8",
    )
    store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
