"""Turn overhead: what Jamono adds between Slack's event and the answer, against floors.

500 signed ``app_mention`` events, 20 in flight (each held until its answer arrives: a closed
loop), are POSTed to four targets that all talk to the same fake Slack and the same fake
OpenAI server, which answers at once:

* ``jamono``: the real ``jamono run`` process in HTTP mode, on a new SQLite file (or
  ``--database-url`` / ``--redis-url``);
* ``storing``: the fair floor, a minimal durable Bolt app (``bench/floor_app.py``) on the same
  database: it claims the event id, reads the thread's history, asks the model with the
  official client, posts the answer and stores the turn (three transactions);
* ``floor``: the same app storing nothing: it asks the model and posts the answer;
* ``bare``: the same app posting "ok" without asking the model, for reference.

Printed per target, in milliseconds:

* ack: from sending the POST to its HTTP response (Slack wants it within 3 s);
* answer: from sending the POST to the fake Slack receiving ``chat.postMessage`` in the thread
  (p50, p99 and the mean: with the loop closed, mean = in flight / turns per second, so a
  p50 far under the mean says that some turns waited much longer than the others);

and turns per second over the measured run (20 in flight keep a process saturated).

Targets (issue 14): Jamono's ack p99 under 100 ms; its answer p50 within 1.2x the storing
floor's. Run with ``make bench`` or ``.venv/bin/python bench/turn_overhead.py [--events N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage import migrate  # noqa: E402
from tests.e2e import ACME, ACME_TOKEN, ALICE, BOT, SIGNING_SECRET  # noqa: E402
from tests.fakes import FakeLLM, FakeSlack, post_event  # noqa: E402
from tests.process import JamonoProcess, free_port  # noqa: E402

WARMUP = 20


async def drive(url: str, slack: FakeSlack, events: int, in_flight: int, channel: str,
                interval: float = 0.0):
    """POST ``events`` mentions, at most ``in_flight`` unanswered at a time (closed loop) and,
    with ``interval`` (seconds), the i-th no earlier than ``i * interval`` after the first (a
    steady rate); returns (ack latencies, answer latencies) in milliseconds."""
    acks: list[float] = []
    answers: list[float] = []
    sent: dict[str, float] = {}
    answered: dict[str, asyncio.Future[None]] = {}
    gate = asyncio.Semaphore(in_flight)

    def on_call(call) -> None:
        ts = call.params.get("thread_ts")
        if call.method == "chat.postMessage" and ts in answered:
            answers.append((call.at - sent[ts]) * 1000)
            answered.pop(ts).set_result(None)

    slack.observers.append(on_call)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as http:

        async def one(i: int) -> None:
            event = slack.app_mention_event(ALICE, channel, f"<@{BOT}> ping {i}")
            body = slack.event_callback(ACME, event)
            await asyncio.sleep(i * interval)
            async with gate:
                answer = answered[event["ts"]] = asyncio.get_running_loop().create_future()
                started = sent[event["ts"]] = time.monotonic()
                status, _ = await post_event(http, url, SIGNING_SECRET, body)
                acks.append((time.monotonic() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"event {i} got HTTP {status}")
                # Keeping the slot until the answer holds the turns in flight at in_flight.
                await asyncio.wait_for(answer, 60)

        try:
            await asyncio.gather(*(one(i) for i in range(events)))
        finally:
            slack.observers.remove(on_call)
    return acks, answers


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


async def measure(name: str, start, events: int, in_flight: int) -> dict[str, float]:
    async with FakeSlack() as slack:
        slack.add_workspace(ACME, ACME_TOKEN, BOT, "Acme")
        slack.add_user(ACME, ALICE, "alice", "alice@acme.test")
        stop, url = await start(slack)
        try:
            await drive(url, slack, WARMUP, in_flight, "C0WARM")
            began = time.monotonic()
            acks, answers = await drive(url, slack, events, in_flight, "C0BENCH")
            elapsed = time.monotonic() - began
        finally:
            await stop()
    if len(answers) != events:
        raise RuntimeError(f"{name}: {len(answers)} answers for {events} events")
    return {
        "ack_p50": percentile(acks, 50), "ack_p99": percentile(acks, 99),
        "answer_p50": percentile(answers, 50), "answer_p99": percentile(answers, 99),
        "answer_mean": statistics.fmean(answers), "turns_per_second": events / elapsed,
    }


def jamono(workdir: Path, llm: FakeLLM, database_url: str | None, redis_url: str | None):
    """Starts the real ``jamono run`` process (HTTP mode) against the fakes."""

    async def start(slack: FakeSlack):
        settings = {
            "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{workdir}/bench.db",
            "SLACK_API_URL": slack.api_url,
            "SLACK_BOT_TOKEN": ACME_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "JAMONO_MODEL": "fake-model",
            "LOG_LEVEL": "WARNING",
            # One user sends every mention: limits high enough to admit them all, so the
            # figures include the limiter's checks but no refusals.
            "JAMONO_TURNS_PER_MINUTE_USER": "1000000",
            "JAMONO_TURNS_PER_MINUTE_WORKSPACE": "1000000",
            "JAMONO_CONCURRENT_TURNS": "1000",
            "JAMONO_TOKENS_PER_DAY": "1000000000000",
            "JAMONO_USD_PER_DAY": "1000000",
        }
        if redis_url:
            settings["REDIS_URL"] = redis_url
        if database_url:  # only the embedded SQLite default migrates itself at start
            await migrate.upgrade_async(database_url)
        process = JamonoProcess(settings, workdir, free_port())
        await process.start()
        return process.stop, process.url + "/slack/events"

    return start


def floor(*options: str):
    """Starts ``bench/floor_app.py`` with ``options`` (``--llm URL``, ``--database-url URL``)."""

    async def start(slack: FakeSlack):
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "floor_app.py"), str(port),
            slack.api_url, ACME_TOKEN, SIGNING_SECRET, *options,
        )
        url = f"http://127.0.0.1:{port}/slack/events"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.post(url, data=b"{}"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

        async def stop() -> None:
            process.terminate()
            await process.wait()

        return stop, url

    return start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--database-url", help="Jamono's DATABASE_URL (default: a new SQLite file)")
    parser.add_argument("--redis-url", help="Jamono's REDIS_URL (default: none)")
    args = parser.parse_args()

    async with FakeLLM() as llm:
        llm.script = lambda request: "ok"
        with tempfile.TemporaryDirectory() as workdir:
            floor_db = args.database_url or f"sqlite+aiosqlite:///{workdir}/floor.db"
            targets = {
                "jamono": jamono(Path(workdir), llm, args.database_url, args.redis_url),
                "storing": floor("--llm", llm.base_url, "--database-url", floor_db),
                "floor": floor("--llm", llm.base_url),
                "bare": floor(),
            }
            results = {
                name: await measure(name, start, args.events, args.in_flight)
                for name, start in targets.items()
            }

    database = (args.database_url or "sqlite").split(":")[0]
    print(f"{args.events} signed mentions, {args.in_flight} in flight, latencies in ms, "
          f"on {database}{' + redis' if args.redis_url else ''}")
    print(f"{'target':<8} {'ack p50':>9} {'ack p99':>9} {'answer p50':>11} {'answer p99':>11} "
          f"{'mean':>7} {'turns/s':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['ack_p50']:>9.1f} {r['ack_p99']:>9.1f} {r['answer_p50']:>11.1f} "
              f"{r['answer_p99']:>11.1f} {r['answer_mean']:>7.1f} {r['turns_per_second']:>8.1f}")
    jamono_p50 = results["jamono"]["answer_p50"]
    ratio = jamono_p50 / results["storing"]["answer_p50"]
    ack_ok = results["jamono"]["ack_p99"] < 100
    print(f"jamono ack p99 < 100 ms: {'yes' if ack_ok else 'NO'}; "
          f"answer p50 = {ratio:.2f}x the storing floor "
          f"(target <= 1.2x: {'yes' if ratio <= 1.2 else 'NO'}), "
          f"{jamono_p50 / results['floor']['answer_p50']:.2f}x the floor storing nothing, "
          f"{jamono_p50 / results['bare']['answer_p50']:.2f}x the bare app")


if __name__ == "__main__":
    asyncio.run(main())
