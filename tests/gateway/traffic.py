"""An application in a pod: several openai-SDK clients back to back, streaming and not."""

from __future__ import annotations

import asyncio

import openai

from tests.gateway.harness import user


class Traffic:
    """Requests from ``clients`` clients until stopped; every outcome is recorded."""

    def __init__(self, base_url: str, model: str = "chat", clients: int = 4) -> None:
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key="modelroute-placeholder", max_retries=0)
        self.model = model
        self.ok: list[str] = []  # x-modelroute-backend of each success
        self.failed: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(stream=i % 2 == 1)) for i in range(clients)]

    async def _run(self, stream: bool) -> None:
        create = self.client.chat.completions.with_raw_response.create
        while not self._stop.is_set():
            try:
                if stream:
                    chunks = await create(model=self.model, messages=user("a b c"), stream=True)
                    text = "".join([c.choices[0].delta.content or "" async for c in chunks.parse() if c.choices])
                    headers = chunks.headers
                else:
                    whole = await create(model=self.model, messages=user("a b c"))
                    text = whole.parse().choices[0].message.content or ""
                    headers = whole.headers
                assert text == "echo: a b c", text
                self.ok.append(headers["x-modelroute-backend"])
            except Exception as e:
                self.failed.append(e)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()
