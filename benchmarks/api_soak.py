"""Soak of the API on PostgreSQL: bounded time, concurrent reads and actions while the sink writes
partitions; errors, p99 latency, connection-pool health and nothing lost (not run by the tests).

    .venv/bin/python benchmarks/api_soak.py                 # ~3 minutes on a 2-core machine
    .venv/bin/python benchmarks/api_soak.py --seconds 60    # shorter

1. Creates a PostgreSQL database (`insight_soak` on the local trust-auth server by default,
   dropped and re-created), migrates it and seeds, through the store, a directory (1 leader,
   4 managers, 40 CSMs) and 30 days of insights for 2,000 accounts.
2. Serves the API in this process (uvicorn on 127.0.0.1, one worker, the app's own pooled
   store) so the SQLAlchemy pool can be inspected directly.
3. For --seconds, in two other processes: --clients concurrent HTTP clients (httpx, asyncio)
   act as random users - the feed with and without filters, deep pages, one insight, an account,
   the team view, and actions (dismiss/snooze/actioned), shares and mark-all-read - while a
   sink writer runs `InsightStore.write_insights` (the sink asset's write) for one new
   partition after another: new episodes, re-detections of open ones, extensions, and a re-run
   of each partition (idempotent).
4. Reports requests, errors (any 5xx, connection error or timeout; 404/422 are expected for
   stale ids and are counted apart), latency p50/p95/p99/max by operation, sink writes and their
   latency, the pool (checked out, overflow) and the server's connections by state
   (pg_stat_activity) before, at the end and after 5 s idle - a leak shows as connections
   checked out or `idle in transaction` after the load - and checks that nothing was lost: every
   acknowledged action is in the feedback history, and each insight's status is its last
   action's. Writes benchmarks/api_soak_results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import platform
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from insight_pipeline.lib.access import STATUS_OF_ACTION  # noqa: E402
from insight_pipeline.lib.signals import CATEGORY_OF_TYPE  # noqa: E402
from insight_pipeline.lib.store import InsightStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "api_soak_results.md"
TYPES = [t for t, c in CATEGORY_OF_TYPE.items() if c != "team"]
ACCOUNTS, CSMS, MANAGERS = 2000, 40, 4
TODAY = datetime.now(UTC).date()


# ------------------------------------------------------------------------------------ data


def directory() -> pl.DataFrame:
    rows = [("L00", "Leader", "leader", None)]
    rows += [(f"M{m:02d}", f"Manager {m}", "manager", "L00") for m in range(MANAGERS)]
    per = CSMS // MANAGERS
    rows += [(f"C{c:02d}", f"CSM {c}", "csm", f"M{c // per:02d}") for c in range(CSMS)]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "name": [r[1] for r in rows],
            "email": [f"{r[0].lower()}@example.com" for r in rows],
            "role": [r[2] for r in rows],
            "manager_id": [r[3] for r in rows],
        }
    )


def episode_id(account: int, kind: str, episode: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"soak|{account}|{kind}|{episode}"))


def partition_plan(day: date, rng: random.Random) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One day's write plan, shaped like the sink's: ~250 upserts (new episodes, and
    re-detections of recent ones, same ids) and ~400 extensions of older open episodes."""
    offset = (day - TODAY).days + 400
    upserts = []
    for _ in range(250):
        account = rng.randrange(ACCOUNTS)
        kind = rng.choice(TYPES)
        episode = offset // 7  # a pattern re-detected within its week keeps its id
        score = round(rng.betavariate(2, 4), 4)
        upserts.append(
            {
                "id": episode_id(account, kind, episode),
                "customer_id": f"A{account:05d}",
                "customer_name": f"Account {account}",
                "user_id": f"C{account % CSMS:02d}",
                "partition_date": day,
                "last_seen_date": day,
                "category": CATEGORY_OF_TYPE[kind],
                "type": kind,
                "subject": "dau",
                "priority": "high" if score >= 0.65 else "medium" if score >= 0.4 else "low",
                "score": score,
                "title": f"{kind} at account {account} ({day})",
                "summary": "Daily active users moved well outside their usual range.",
                "evidence": '[{"metric": "dau", "value": 12.0, "comparison": "baseline 20.0"}]',
                "so_what": "Accounts like this one renewed less often.",
                "recommended_action": '{"type": "call", "description": "Call them.", '
                '"quick_action_id": "schedule_meeting"}',
                "fingerprint": f"A{account:05d}|{kind}|dau|{episode}",
                "score_parts": '{"severity": 0.5}',
                "expires_at": datetime(day.year, day.month, day.day, tzinfo=UTC)
                + timedelta(days=14),
            }
        )
    ups = pl.DataFrame(upserts).unique("id", keep="last", maintain_order=True)
    ups = ups.with_columns(pl.col("expires_at").cast(pl.Datetime("us", "UTC")))
    extend_ids = [
        episode_id(rng.randrange(ACCOUNTS), rng.choice(TYPES), offset // 7 - 1) for _ in range(400)
    ]
    ext = pl.DataFrame(
        {
            "id": list(dict.fromkeys(extend_ids)),
            "last_seen_date": day,
            "expires_at": datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=14),
        }
    ).with_columns(pl.col("expires_at").cast(pl.Datetime("us", "UTC")))
    return ups, ext.filter(~pl.col("id").is_in(ups["id"].implode()))


def seed(url: str) -> tuple[dict[str, str], int]:
    store = InsightStore(url)
    try:
        store.migrate()
        store.sync_users(directory())
        rng = random.Random(1)
        for back in range(30, 0, -1):
            store.write_insights(*partition_plan(TODAY - timedelta(days=back), rng))
        users = directory()["user_id"].to_list()
        tokens = {u: store.create_token(u, label="soak")[1] for u in users}
        return tokens, store.count_insights()
    finally:
        store.dispose()


# ------------------------------------------------------------------------------------ sink


def sink_writer(url: str, seconds: float, out: Any) -> None:
    """Writes partition after partition (each twice: a re-run changes nothing) until the end."""
    store = InsightStore(url)
    rng = random.Random(7)
    latencies: list[float] = []
    errors: list[str] = []
    written: set[str] = set()
    day = TODAY
    deadline = time.monotonic() + seconds
    partitions = 0
    try:
        while time.monotonic() < deadline:
            ups, ext = partition_plan(day, rng)
            for _ in range(2):
                began = time.perf_counter()
                try:
                    store.write_insights(ups, ext)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                else:
                    written.update(ups["id"])
                latencies.append(time.perf_counter() - began)
            partitions += 1
            day += timedelta(days=1)
            time.sleep(0.5)
    finally:
        store.dispose()
    out.put({"latencies": latencies, "errors": errors, "partitions": partitions,
             "new_ids": len(written)})  # fmt: skip


# ------------------------------------------------------------------------------------ load

OPERATIONS = [
    ("feed", 30),
    ("feed_filtered", 15),
    ("feed_deep_page", 5),
    ("one", 12),
    ("account", 5),
    ("team", 5),
    ("action", 20),
    ("share", 5),
    ("mark_all_read", 3),
]


async def client_loop(
    base: str, tokens: dict[str, str], deadline: float, seed_: int, log: dict[str, Any]
) -> None:
    rng = random.Random(seed_)
    users = list(tokens)
    csms = [u for u in users if u.startswith("C")]
    names = [o for o, _ in OPERATIONS]
    weights = [w for _, w in OPERATIONS]
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)  # user -> [(id, customer)]
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        while time.monotonic() < deadline:
            user = rng.choice(csms) if rng.random() < 0.8 else rng.choice(users)
            auth = {"Authorization": f"Bearer {tokens[user]}"}
            op = rng.choices(names, weights)[0]
            mine = seen[user]
            if op in ("one", "action", "share", "account") and not mine:
                op = "feed"
            method, path, body = "GET", "/api/insights?limit=20", None
            if op == "feed_filtered":
                week_ago = TODAY - timedelta(days=7)
                params = rng.choice(
                    ["priority=high", "category=risk", "type=usage_drop", f"from={week_ago}"]
                )
                path = f"/api/insights?{params}&limit=50"
            elif op == "feed_deep_page":
                path = f"/api/insights?limit=20&offset={rng.choice([100, 400, 1000])}"
            elif op == "one":
                path = f"/api/insights/{rng.choice(mine)[0]}"
            elif op == "account":
                path = f"/api/accounts/{rng.choice(mine)[1]}/insights"
            elif op == "team":
                path = "/api/team/insights"
            elif op == "action":
                method, target = "POST", rng.choice(mine)[0]
                path = f"/api/insights/{target}/action"
                action = rng.choice(["dismiss", "actioned", "snooze"])
                body = {"action": action, "feedback": rng.choice(["helpful", "not_relevant"])}
                if action == "snooze":
                    until = datetime.now(UTC) + timedelta(days=rng.randint(1, 9))
                    body["snooze_until"] = until.isoformat()
            elif op == "share":
                method = "POST"
                path = f"/api/insights/{rng.choice(mine)[0]}/share"
                body = {"user_ids": [rng.choice(csms)], "note": "have a look"}
            elif op == "mark_all_read":
                method, path = "POST", "/api/insights/mark-all-read"
            began = time.perf_counter()
            try:
                response = await http.request(method, path, headers=auth, json=body)
            except httpx.HTTPError as exc:
                log["errors"].append(f"{op}: {type(exc).__name__}: {exc}")
                log["latency"][op].append(time.perf_counter() - began)
                continue
            took = time.perf_counter() - began
            log["latency"][op].append(took)
            log["status"][(op, response.status_code)] += 1
            if response.status_code >= 500:
                log["errors"].append(f"{op}: {response.status_code} {response.text[:200]}")
                continue
            if op.startswith("feed") and response.status_code == 200:
                rows = response.json()["insights"]
                if rows:
                    seen[user] = [(r["id"], r["customer_id"]) for r in rows][:50]
            if op == "action" and response.status_code == 200:
                got = response.json()
                log["actions"].append((got["event_id"], target, body["action"]))


def load(base: str, tokens: dict[str, str], seconds: float, clients: int, out: Any) -> None:
    log: dict[str, Any] = {
        "latency": defaultdict(list),
        "status": Counter(),
        "errors": [],
        "actions": [],
    }
    deadline = time.monotonic() + seconds

    async def run() -> None:
        await asyncio.gather(*(client_loop(base, tokens, deadline, i, log) for i in range(clients)))

    asyncio.run(run())
    out.put(
        {
            "latency": dict(log["latency"]),
            "status": dict(log["status"]),
            "errors": log["errors"],
            "actions": log["actions"],
        }
    )


# ------------------------------------------------------------------------------------ server


def pg_connections(admin: Any, database: str) -> dict[str, int]:
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "select coalesce(state, 'none'), count(*) from pg_stat_activity "
                "where datname = :db and pid <> pg_backend_pid() group by 1"
            ),
            {"db": database},
        ).all()
    return {str(state): int(n) for state, n in rows}


def pool_stats(store: InsightStore) -> dict[str, Any]:
    pool = store._engine.pool  # type: ignore[attr-defined]
    return {
        "checked_out": pool.checkedout(),  # type: ignore[attr-defined]
        "in_pool": pool.checkedin(),  # type: ignore[attr-defined]
        "overflow": pool.overflow(),  # type: ignore[attr-defined]
        "size": pool.size(),  # type: ignore[attr-defined]
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/insight_soak"
    )
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    import uvicorn

    from insight_pipeline.api.app import create_app

    url = make_url(args.postgres_url)
    database = url.database or "insight_soak"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("select pg_terminate_backend(pid) from pg_stat_activity where datname = :d"),
            {"d": database},
        )
        conn.execute(text(f'drop database if exists "{database}"'))
        conn.execute(text(f'create database "{database}"'))
    db_url = url.render_as_string(hide_password=False)
    started = time.perf_counter()
    tokens, seeded = seed(db_url)
    print(f"seeded {seeded} insights in {time.perf_counter() - started:.1f} s")

    store = InsightStore(db_url)
    app = create_app(store=store, source="")
    port = args.port
    if not port:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    httpx.get(f"{base}/api/insights", headers={"Authorization": f"Bearer {tokens['L00']}"})
    before = {"pool": pool_stats(store), "server": pg_connections(admin, database)}

    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    sink = ctx.Process(target=sink_writer, args=(db_url, args.seconds, results))
    clients = ctx.Process(target=load, args=(base, tokens, args.seconds, args.clients, results))
    began = time.perf_counter()
    sink.start()
    clients.start()
    peak: dict[str, int] = Counter()
    outputs: list[dict[str, Any]] = []
    # read the results while waiting: a child cannot exit before its queue is drained
    while len(outputs) < 2:
        stats = pool_stats(store)
        peak["checked_out"] = max(peak["checked_out"], stats["checked_out"])
        peak["overflow"] = max(peak["overflow"], stats["overflow"])
        try:
            outputs.append(results.get(timeout=0.5))
        except queue.Empty:
            if time.perf_counter() - began > args.seconds + 180:
                raise RuntimeError("the load did not stop in time") from None
    sink.join()
    clients.join()
    wall = time.perf_counter() - began
    load_out = next(o for o in outputs if "status" in o)
    sink_out = next(o for o in outputs if "partitions" in o)
    at_end = {"pool": pool_stats(store), "server": pg_connections(admin, database)}
    time.sleep(5)
    idle = {"pool": pool_stats(store), "server": pg_connections(admin, database)}

    # nothing lost: every acknowledged action is in the history; statuses follow the last one
    events = store.feedback_events()
    acknowledged = {event_id for event_id, _, _ in load_out["actions"]}
    missing = acknowledged - set(events["id"])
    last = (
        events.sort("created_at")
        .group_by("insight_id", maintain_order=True)
        .agg(pl.col("action").last())
    )
    table = store.get_insights(last["insight_id"].to_list()).select("id", "status")
    joined = last.join(table, left_on="insight_id", right_on="id")
    wrong_status = joined.filter(
        pl.col("status") != pl.col("action").replace_strict(STATUS_OF_ACTION)
    ).height
    total_insights = store.count_insights()

    server.should_exit = True
    thread.join(timeout=10)
    store.dispose()
    admin.dispose()

    latency = load_out["latency"]
    statuses = Counter({tuple(k): v for k, v in load_out["status"].items()})
    requests = sum(len(v) for v in latency.values())
    errors = load_out["errors"]
    every = [x for v in latency.values() for x in v]
    lines = [
        "# API soak on PostgreSQL",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({mp.cpu_count()} cores, {platform.python_version()}); `benchmarks/api_soak.py "
        f"--seconds {args.seconds:g} --clients {args.clients}`; one uvicorn worker in the "
        f"benchmark's process, clients and sink writer in two other processes, all on loopback.",
        "",
        f"- Load held: {requests} requests in {wall:.0f} s ({requests / wall:.1f}/s) from "
        f"{args.clients} concurrent clients, while the sink wrote {sink_out['partitions']} "
        f"partitions, each twice ({len(sink_out['latencies'])} write transactions of ~250 "
        f"upserts + ~400 extensions; p50 "
        f"{statistics.median(sink_out['latencies']) * 1000:.0f} ms, max "
        f"{max(sink_out['latencies']) * 1000:.0f} ms).",
        f"- Errors: {len(errors)} (5xx, connection errors, timeouts) of {requests} requests; "
        f"sink write failures: {len(sink_out['errors'])}.",
        f"- Latency over all requests (client side, queueing included): p50 "
        f"{quantile(every, 0.5) * 1000:.0f} ms, p95 {quantile(every, 0.95) * 1000:.0f} ms, "
        f"p99 {quantile(every, 0.99) * 1000:.0f} ms, max {max(every) * 1000:.0f} ms.",
        f"- Nothing lost: {len(acknowledged)} acknowledged actions, {len(missing)} missing "
        f"from the feedback history; {wrong_status} insights whose status is not their last "
        f"action's; {total_insights} insights in the table "
        f"({seeded} seeded + the sink's new ones).",
        "",
        "| operation | requests | statuses | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for op, _ in OPERATIONS:
        values = latency.get(op, [])
        if not values:
            continue
        codes = ", ".join(f"{code}: {n}" for (o, code), n in sorted(statuses.items()) if o == op)
        lines.append(
            f"| {op} | {len(values)} | {codes} | {quantile(values, 0.5) * 1000:.0f} | "
            f"{quantile(values, 0.95) * 1000:.0f} | {quantile(values, 0.99) * 1000:.0f} | "
            f"{max(values) * 1000:.0f} |"
        )
    lines += [
        "",
        "Connections (SQLAlchemy pool of the API's store: size 5, overflow up to 10; the "
        "server's view from pg_stat_activity, by state, the sink writer's own included while "
        "it runs):",
        "",
        "| when | pool checked out | pool overflow | server connections |",
        "|---|---:|---:|---|",
        f"| before the load | {before['pool']['checked_out']} | {before['pool']['overflow']} "
        f"| {before['server']} |",
        f"| peak during the load | {peak['checked_out']} | {peak['overflow']} | |",
        f"| at the end | {at_end['pool']['checked_out']} | {at_end['pool']['overflow']} "
        f"| {at_end['server']} |",
        f"| after 5 s idle | {idle['pool']['checked_out']} | {idle['pool']['overflow']} "
        f"| {idle['server']} |",
        "",
        "404/422 answers are expected (an id that was on the page a moment ago, a share to "
        "oneself, a snooze of a dismissed insight); errors are listed below when there are any.",
    ]
    if errors or sink_out["errors"]:
        lines += ["", "Errors (first 20):", ""]
        lines += [f"- `{e}`" for e in (errors + sink_out["errors"])[:20]]
    report = "\n".join(lines) + "\n"
    RESULTS.write_text(report, encoding="utf-8")
    print(report)
    leaked = idle["pool"]["checked_out"] or idle["server"].get("idle in transaction", 0)
    return 1 if errors or sink_out["errors"] or missing or wrong_status or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
