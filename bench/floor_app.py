"""The floor for bench/turn_overhead.py: a minimal Bolt app that only answers mentions.

Run as ``python bench/floor_app.py PORT API_URL TOKEN SIGNING_SECRET [LLM_BASE_URL]``.

With ``LLM_BASE_URL`` it answers what the model says for the mention's text (one
``chat.completions.create`` with the official client, then ``chat.postMessage``): the least
any LLM bot does. Without it, it posts "ok" and touches no model at all.
"""

import sys

from aiohttp import web
from openai import AsyncOpenAI
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

port, api_url, token, secret = sys.argv[1:5]
llm = AsyncOpenAI(api_key="sk-floor", base_url=sys.argv[5]) if len(sys.argv) > 5 else None
app = AsyncApp(client=AsyncWebClient(token=token, base_url=api_url), signing_secret=secret)


@app.event("app_mention")
async def answer(event, client):
    text = "ok"
    if llm is not None:
        completion = await llm.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": event["text"]}]
        )
        text = completion.choices[0].message.content
    await client.chat_postMessage(
        channel=event["channel"], thread_ts=event.get("thread_ts") or event["ts"], text=text
    )


web.run_app(app.web_app(path="/slack/events"), host="127.0.0.1", port=int(port),
            print=None, access_log=None)
