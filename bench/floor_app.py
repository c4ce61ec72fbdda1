"""The floors for bench/turn_overhead.py: minimal Bolt apps that answer mentions.

    python bench/floor_app.py PORT API_URL TOKEN SIGNING_SECRET [--llm URL] [--database-url URL]

* With ``--llm`` it answers what the model says (one ``chat.completions.create`` with the
  official client, then ``chat.postMessage``): the least any LLM bot does. Without it, it posts
  "ok" and touches no model at all.
* With ``--database-url`` as well it is a durable bot, the fair floor of issue 14: per mention
  it claims the event id (``INSERT … ON CONFLICT DO NOTHING``), reads the thread's history,
  asks the model with it, posts the answer, and stores the user's message, the answer and the
  token usage in one transaction: three transactions a turn, with SQLAlchemy's async engine on
  stock drivers (aiosqlite with WAL, or asyncpg). Its tables are its own (``floor_*``), created
  at start, so it can share Jamono's database.
"""

import argparse
import asyncio

from aiohttp import web
from openai import AsyncOpenAI
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, event, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

HISTORY = 400  # messages of the thread given to the model, as Jamono's default

metadata = MetaData()
claims = Table("floor_claims", metadata, Column("event_id", String(64), primary_key=True))
messages = Table(
    "floor_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("thread_ts", String(32), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
)
usage = Table(
    "floor_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("thread_ts", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("port", "api_url", "token", "signing_secret"):
        parser.add_argument(name)
    parser.add_argument("--llm", help="the model's base URL (default: post 'ok')")
    parser.add_argument("--database-url", help="store each turn there (needs --llm)")
    args = parser.parse_args()
    if args.database_url and not args.llm:
        parser.error("--database-url stores the model's answers: it needs --llm")
    return args


def open_engine(url: str) -> AsyncEngine:
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    engine = create_async_engine(url, connect_args={"timeout": 30} if "sqlite" in url else {})
    if "sqlite" in url:

        @event.listens_for(engine.sync_engine, "connect")
        def wal(connection, _record) -> None:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")

    return engine


async def main() -> None:
    args = parse()
    llm = AsyncOpenAI(api_key="sk-floor", base_url=args.llm) if args.llm else None
    engine = open_engine(args.database_url) if args.database_url else None
    if engine is not None:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        dialect_insert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
        claim = dialect_insert(claims).on_conflict_do_nothing(index_elements=["event_id"])
    app = AsyncApp(
        client=AsyncWebClient(token=args.token, base_url=args.api_url),
        signing_secret=args.signing_secret,
    )

    @app.event("app_mention")
    async def answer(body, event, client):
        thread = event.get("thread_ts") or event["ts"]
        history = []
        if engine is not None:
            async with engine.begin() as connection:
                won = await connection.execute(claim, {"event_id": body["event_id"]})
            if won.rowcount != 1:
                return
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(messages.c.role, messages.c.content)
                    .where(messages.c.thread_ts == thread)
                    .order_by(messages.c.id.desc())
                    .limit(HISTORY)
                )
                history = [{"role": role, "content": text} for role, text in rows][::-1]
        text, prompt = "ok", {"role": "user", "content": event["text"]}
        if llm is not None:
            completion = await llm.chat.completions.create(
                model="fake-model", messages=[*history, prompt]
            )
            text = completion.choices[0].message.content
        await client.chat_postMessage(channel=event["channel"], thread_ts=thread, text=text)
        if engine is not None:
            async with engine.begin() as connection:
                await connection.execute(
                    insert(messages),
                    [
                        {"thread_ts": thread, **prompt},
                        {"thread_ts": thread, "role": "assistant", "content": text},
                    ],
                )
                await connection.execute(
                    insert(usage),
                    {
                        "thread_ts": thread,
                        "model": completion.model,
                        "prompt_tokens": completion.usage.prompt_tokens,
                        "completion_tokens": completion.usage.completion_tokens,
                    },
                )

    runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(args.port)).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
