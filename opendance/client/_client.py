"""``Client`` and ``AsyncClient``: the operations of ``_core`` performed with httpx.

::

    with opendance.Client("http://127.0.0.1:8000", api_key="...") as client:
        task = client.create("jisudance2.0-480p", "a red fox in the snow", image="fox.png")
        task = client.wait(task, on_progress=lambda t: print(t.status, t.progress))
        client.download(task, "fox.mp4")

Both clients take the server's base URL (``OPENDANCE_BASE_URL``, default
``http://127.0.0.1:8000``) and API key (``OPENDANCE_API_KEY``) and work against any server that
speaks the legacy task API of spec/api.md. Everything but the transport calls lives in ``_core``.
"""

from __future__ import annotations

import builtins

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Unpack

import httpx

from ._core import Core, CreateOptions, Download, Effect, Notify, Op, Request, Sleep, T, create_body
from ._errors import error_from_response
from ._models import Task

_CREATE_DOC = """Submit a task; answers at once with the task (``status: "queued"``).

Media arguments take an ``http(s)://`` URL or ``data:`` URI (sent as is), or a local file path
or ``bytes`` (sent as a ``data:`` URI). ``images``/``videos``/``audios`` take one or a list.
The keyword-only options ``seed``, ``negative_prompt``, ``generate_audio``, ``watermark``,
``camera_fixed``, ``return_last_frame``, ``callback_url`` and ``loras`` go into ``extra_body``;
``loras`` takes names (at the scale the models file gives) or ``{"name": ..., "scale": ...}``.
"""


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response)
    if not response.content:
        return None
    return response.json()


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


class Client:
    """The synchronous client (``httpx.Client``)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        self._core = Core(base_url, api_key)
        self._http = httpx.Client(headers=self._core.headers, timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def _run(self, op: Op[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = self._perform(effect), None
            except Exception as exc:  # handed back to the operation, which may retry
                value, error = None, exc

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Request):
            url = self._core.url(effect.url)
            headers = {**self._core.auth_for(url), **effect.headers}
            r = self._http.request(effect.method, url, json=effect.json, params=effect.params, headers=headers)
            return _result(r)
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
        elif isinstance(effect, Notify):
            effect.callback(effect.task)
        elif isinstance(effect, Download):
            with self._http.stream("GET", effect.url, headers=effect.headers, follow_redirects=True) as r:
                if r.status_code >= 400:
                    r.read()
                    raise error_from_response(r)
                effect.path.parent.mkdir(parents=True, exist_ok=True)
                with open(_part(effect.path), "wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
            os.replace(_part(effect.path), effect.path)  # never a half-written file at ``path``
        return None

    def create(
        self, model: str, prompt: str | None = None, *, idempotency_key: str | None = None, **options: Unpack[CreateOptions]
    ) -> Task:
        return self._run(self._core.create(create_body(model, prompt, **options), idempotency_key))

    create.__doc__ = _CREATE_DOC

    def get(self, task: Task | str) -> Task:
        return self._run(self._core.get(task))

    def list(
        self, *, status: str | None = None, model: str | None = None, order: str = "desc", page_size: int = 20
    ) -> Iterator[Task]:
        """Every task of the caller, newest first (``order="asc"``: oldest first), fetching
        pages as the iteration goes."""
        after = None
        while True:
            tasks, after = self._run(self._core.list_page(after, status, model, order, page_size))
            yield from tasks
            if after is None:
                return

    def cancel(self, task: Task | str) -> Task:
        return self._run(self._core.cancel(task))

    def delete(self, task: Task | str) -> None:
        self._run(self._core.delete(task))

    def models(self) -> builtins.list[dict[str, Any]]:
        return self._run(self._core.models())

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float = 1800.0,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        on_progress: Callable[[Task], Any] | None = None,
        raise_on_failure: bool = True,
    ) -> Task:
        """Poll until the task is completed (returned) or failed (``TaskFailedError``, or
        returned with ``raise_on_failure=False``); ``TimeoutError`` after ``timeout`` seconds.
        ``on_progress(task)`` is called after every poll."""
        return self._run(self._core.wait(task, timeout, poll_interval, max_interval, on_progress, raise_on_failure))

    def download(self, task: Task | str, path: str | os.PathLike | None = None, *, variant: str = "video") -> Path:
        """Write the video (or ``variant="last_frame"``) to ``path``; returns the path."""
        return self._run(self._core.download(task, path, variant))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asynchronous client (``httpx.AsyncClient``); the same methods, awaited.
    ``on_progress`` may be a plain function or a coroutine function."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        self._core = Core(base_url, api_key)
        self._http = httpx.AsyncClient(headers=self._core.headers, timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def _run(self, op: Op[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = await self._perform(effect), None
            except Exception as exc:  # handed back to the operation, which may retry
                value, error = None, exc

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Request):
            url = self._core.url(effect.url)
            headers = {**self._core.auth_for(url), **effect.headers}
            r = await self._http.request(effect.method, url, json=effect.json, params=effect.params, headers=headers)
            return _result(r)
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
        elif isinstance(effect, Notify):
            outcome = effect.callback(effect.task)
            if inspect.isawaitable(outcome):
                await outcome
        elif isinstance(effect, Download):
            async with self._http.stream("GET", effect.url, headers=effect.headers, follow_redirects=True) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise error_from_response(r)
                effect.path.parent.mkdir(parents=True, exist_ok=True)
                with open(_part(effect.path), "wb") as f:  # noqa: ASYNC230 (a local file; 1 MiB writes between network reads)
                    async for chunk in r.aiter_bytes(1 << 20):
                        f.write(chunk)
            os.replace(_part(effect.path), effect.path)
        return None

    async def create(
        self, model: str, prompt: str | None = None, *, idempotency_key: str | None = None, **options: Unpack[CreateOptions]
    ) -> Task:
        return await self._run(self._core.create(create_body(model, prompt, **options), idempotency_key))

    create.__doc__ = _CREATE_DOC

    async def get(self, task: Task | str) -> Task:
        return await self._run(self._core.get(task))

    async def list(
        self, *, status: str | None = None, model: str | None = None, order: str = "desc", page_size: int = 20
    ) -> AsyncIterator[Task]:
        """Every task of the caller (``async for``), fetching pages as the iteration goes."""
        after = None
        while True:
            tasks, after = await self._run(self._core.list_page(after, status, model, order, page_size))
            for task in tasks:
                yield task
            if after is None:
                return

    async def cancel(self, task: Task | str) -> Task:
        return await self._run(self._core.cancel(task))

    async def delete(self, task: Task | str) -> None:
        await self._run(self._core.delete(task))

    async def models(self) -> builtins.list[dict[str, Any]]:
        return await self._run(self._core.models())

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float = 1800.0,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        on_progress: Callable[[Task], Any] | None = None,
        raise_on_failure: bool = True,
    ) -> Task:
        """See ``Client.wait``."""
        return await self._run(self._core.wait(task, timeout, poll_interval, max_interval, on_progress, raise_on_failure))

    async def download(self, task: Task | str, path: str | os.PathLike | None = None, *, variant: str = "video") -> Path:
        """See ``Client.download``."""
        return await self._run(self._core.download(task, path, variant))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
