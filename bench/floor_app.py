"""The floor for bench/turn_overhead.py: a minimal Bolt app that only answers mentions.

Run as ``python bench/floor_app.py PORT API_URL TOKEN SIGNING_SECRET``.
"""

import sys

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

port, api_url, token, secret = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
app = AsyncApp(client=AsyncWebClient(token=token, base_url=api_url), signing_secret=secret)


@app.event("app_mention")
async def answer(event, client):
    await client.chat_postMessage(
        channel=event["channel"], thread_ts=event.get("thread_ts") or event["ts"], text="ok"
    )


web.run_app(app.web_app(path="/slack/events"), host="127.0.0.1", port=int(port),
            print=None, access_log=None)
