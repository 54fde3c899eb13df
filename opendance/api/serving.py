"""The task service: what each route does, with no HTTP in it.

create: validate -> fetch/decode/probe media -> store inputs -> store the task -> runner.
Everything that can be wrong with a request is found before the task exists, so a task that
exists can always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..callbacks import CallbackSender
from ..config import ModelConfig, Settings
from ..domain import IllegalTransition, RawStatus, Status, new_task_id, nearest_aspect_ratio
from ..engines.base import Job
from ..errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from ..keys import Caller
from ..media.budget import IntakeScope, MediaWork
from ..media.fetch import SafeFetcher
from ..media.intake import IntakeResult, MediaRequest, intake_media
from ..metrics import Metrics
from ..runner.base import Runner
from ..runner.execute import input_prefix
from ..storage import LocalFile, Redirect, Storage, Stream
from ..store import DuplicateIdempotencyKey, StoreWriteFailed, Task, TaskStore
from .auth import UrlSigner
from .bodies import Bodies, encode, page_body
from .limits import QueueAdmission
from .quotas import KeyQuotas
from .protocol import task_object
from .validate import CreateRequest, parse_create

log = logging.getLogger("opendance.service")

VARIANTS = ("video", "last_frame")
# Storage nobody has written to for this long is a leftover (sweep_leftovers): far longer than
# any create (fetch deadlines are minutes) or file write takes.
LEFTOVER_GRACE = 3600.0


class TaskService:
    def __init__(
        self,
        settings: Settings,
        models: dict[str, ModelConfig],
        store: TaskStore,
        storage: Storage,
        runner: Runner,
        fetcher: SafeFetcher,
        callbacks: CallbackSender,
        signer: UrlSigner,
        metrics: Metrics,
        signed_urls: Callable[[], bool],
        admission: QueueAdmission | None = None,
        media_work: MediaWork | None = None,
        quotas: KeyQuotas | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.storage = storage
        self.runner = runner
        self.fetcher = fetcher
        self.callbacks = callbacks
        self.signer = signer
        self.metrics = metrics
        self.signed_urls = signed_urls  # asked per link: a key made in the store closes an open server
        self.admission = admission or QueueAdmission(0, 0, lambda owner, leave_out: (0, 0))  # no limits
        self.media_work = media_work or MediaWork.from_settings(settings)
        self.quotas = quotas
        # tasks.api -> the task object its callbacks carry (the Ark route adds "ark")
        self.callback_shapes: dict[str, Callable[[Task], dict[str, Any]]] = {}
        self.bodies = Bodies(self.render, signed_urls)  # rendered task objects of the hot reads
        self._created: dict[tuple[str, str], Any] = {}  # the tasks-created counter's children
        runner.add_listener(self.task_changed)

    def models_for(self, caller: Caller) -> dict[str, ModelConfig]:
        """The models this caller may use; the others do not exist for it."""
        if caller.models is None:
            return self.models
        return {name: m for name, m in self.models.items() if caller.may_use(name)}

    # -- rendering -----------------------------------------------------------------------

    def content_url(self, task: Task, variant: str = "video", base_url: str | None = None) -> str:
        """The link to a task's file: on ``public_url`` when set, else on the base URL of the
        request being answered (the host and port the client reached), else (a callback, which
        answers no request) on the one of the request that created the task."""
        base = (self.settings.public_url or base_url or task.base_url).rstrip("/")
        url = f"{base}/v1/video/generations/{task.id}/content"
        query = [] if variant == "video" else [f"variant={variant}"]
        if self.signed_urls():
            query.append(f"token={self.signer.sign(task.id, variant)}")
        return url + ("?" + "&".join(query) if query else "")

    def render(self, task: Task, base_url: str | None = None) -> dict[str, Any]:
        done = task.raw_status is RawStatus.COMPLETED
        return task_object(
            task,
            self.content_url(task, base_url=base_url) if done else None,
            self.content_url(task, "last_frame", base_url) if done and task.last_frame_key else None,
        )

    def render_each(self, tasks: list[Task], render: Callable[[Task], dict[str, Any]]) -> list[dict[str, Any]]:
        """``render`` of every task, leaving out (and logging) one that cannot be rendered: one
        bad task never breaks a list."""
        out = []
        for task in tasks:
            try:
                out.append(render(task))
            except Exception:
                log.exception("task %s cannot be rendered; left out of the list", task.id)
        return out

    async def task_changed(self, task: Task) -> None:
        if task.callback_url:
            render = self.callback_shapes.get(task.api or "", self.render)
            self.callbacks.send(task.id, task.callback_url, render(task), task.raw_status.value, owner=task.owner)

    async def resend_due_callbacks(self, changed_before: float) -> int:
        """Send the callbacks a stopped server left pending (tasks whose last change, before
        ``changed_before``, is not marked sent): each task's current object, once. Returns how
        many were sent."""
        sent, after = 0, 0
        while page := await asyncio.to_thread(self.store.callbacks_due, changed_before, after):
            after = page[-1][0]
            for _, task in page:
                if not self.callbacks.sending(task.id):
                    await self.task_changed(task)
                    sent += 1
        return sent

    # -- create --------------------------------------------------------------------------

    async def create(
        self, body: Any, *, caller: Caller, base_url: str, idempotency_key: str | None = None, api: str | None = None
    ) -> Task:
        """``api``: the API the body came through when its callbacks take that API's shape."""
        owner = caller.owner
        req = parse_create(body, self.models_for(caller))
        request_hash = None
        if idempotency_key is not None:
            request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            earlier = await asyncio.to_thread(self.store.get_by_idempotency_key, owner, idempotency_key)
            if earlier is not None:
                return self._same_request(earlier, request_hash)
        # Counted before any media is fetched, so a full queue costs the server nothing.
        task_id = new_task_id()
        quotas = self.quotas
        key_quota = quotas.admit(caller, task_id, req.duration) if quotas else contextlib.nullcontext()
        # The key's quota before the media budgets: a refused create holds no share of them.
        # A text-only create takes no share of the media budgets and has no media to fetch.
        intake = self._intake_scope(owner, task_id, req) if req.has_media else contextlib.nullcontext()
        async with self.admission.admit(owner, task_id), key_quota, intake as scope:
            if req.callback_url:
                await self.fetcher.check_url(req.callback_url, param="extra_body.callback_url")
            try:
                media = (
                    await intake_media(
                        MediaRequest(req.image, req.last_image, req.images, req.videos, req.audios),
                        fetcher=self.fetcher,
                        settings=self.settings,
                        key_prefix=input_prefix(task_id),
                        scope=scope,
                    )
                    if scope is not None
                    else IntakeResult.empty()
                )
            except OSError as exc:
                # Spooling the media to disk failed (a full disk): the server's fault, not the request's.
                message = f"the server could not store this task's inputs ({exc.strerror or exc}); try again later"
                raise ServiceUnavailable(message, code="storage_error", retry_after=30) from None
            model = self.models[req.model]
            aspect = req.aspect_ratio or self._default_aspect(media)
            width, height = model.size(aspect)
            spec = model.modes[req.mode]
            job = Job(
                task_id=task_id,
                model=req.model,
                mode=req.mode,
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                width=width,
                height=height,
                fps=model.fps,
                duration=req.duration,
                seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
                engine={"engine": spec.engine, **spec.options},
                image=media.image,
                last_image=media.last_image,
                images=media.images,
                videos=media.videos,
                audios=media.audios,
                options=dict(req.options),
                input_bytes=media.input_bytes,
                loras=req.loras,
            )
            row = {
                "check": quotas.store_check(caller, task_id, req.duration) if quotas else None,
                "expires_at": time.time() + req.expires_after if req.expires_after is not None else None,
                "api": api,
            }
            fields = self._new_fields(req, job, aspect, owner, base_url, idempotency_key, request_hash, row)
            try:
                # Without inputs to store or a quota to check, on the loop where the database
                # takes the row at once (store/inline_insert.py); else, or when it did not, in a thread.
                at_once = None if media.blobs else self.store.create_at_once(**fields)
                task = (
                    at_once if at_once is not None else await asyncio.to_thread(self._store_new, job.task_id, media.blobs, fields)
                )
            except StoreWriteFailed as exc:
                # The database did not take the row (a full disk under SQLite, PostgreSQL gone):
                # no task exists, and the inputs written for it were removed by ``_store_new``.
                log.error("create %s: %s", task_id, exc)
                message = "the server could not store this task (its database did not take the write); try again later"
                raise ServiceUnavailable(message, code="storage_error", retry_after=30) from None
            except OSError as exc:
                # A full disk or a failing write while storing the inputs: the server's fault, not
                # the request's; nothing was stored (``_store_new`` removes what it wrote).
                message = f"the server could not store this task's inputs ({exc.strerror or exc}); try again later"
                raise ServiceUnavailable(message, code="storage_error", retry_after=30) from None
            except DuplicateIdempotencyKey:
                # Two requests with the same key raced; the other one made the task.
                assert idempotency_key is not None  # only a keyed create can collide
                earlier = await asyncio.to_thread(self.store.get_by_idempotency_key, owner, idempotency_key)
                if earlier is None:  # the other one made it and it was deleted since
                    message = "a task with this Idempotency-Key was made and deleted while this request ran; retry"
                    raise Conflict(message, param="Idempotency-Key", code="idempotency_key_reused") from None
                return self._same_request(earlier, request_hash)
        if req.ignored_fields:
            log.info("task %s: ignored the unknown fields %s (misspelt?)", task.id, ", ".join(req.ignored_fields))
        created = self._created.get((task.model, task.mode))
        if created is None:  # labels() takes a lock and builds the series key each call: kept per (model, mode)
            created = self._created[task.model, task.mode] = self.metrics.created.labels(task.model, task.mode)
        created.inc()
        await self.runner.submit(task)
        await self.task_changed(task)
        return task

    @contextlib.asynccontextmanager
    async def _intake_scope(self, owner: str, task_id: str, req: CreateRequest) -> AsyncIterator[IntakeScope]:
        """The create's share of the media budgets and its spool folder (for a create that sends
        media); with the key's stored input bytes counted first when the per-key cap is on."""
        cap = self.settings.max_input_bytes_per_key
        stored = await asyncio.to_thread(self.store.stored_input_bytes, owner) if cap else 0
        async with self.media_work.intake(owner, task_id, stored=stored, cap=cap) as scope:
            yield scope

    def _same_request(self, earlier: Task, request_hash: str | None) -> Task:
        if earlier.request_hash != request_hash:
            raise Conflict(
                "this Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return earlier

    @staticmethod
    def _default_aspect(media) -> str:
        """16:9 for text; else the ratio nearest to the first input image (or video)."""
        first = media.image or (media.images[0] if media.images else None) or (media.videos[0] if media.videos else None)
        if first is None or not first.width or not first.height:
            return "16:9"
        return nearest_aspect_ratio(first.width, first.height)

    @staticmethod
    def _new_fields(req: CreateRequest, job: Job, aspect: str, owner, base_url, idempotency_key, request_hash, row) -> dict:
        """The store's ``create`` arguments for this request's task."""
        return dict(
            id=job.task_id,
            owner=owner,
            model=job.model,
            mode=job.mode.value,
            duration=job.duration,
            aspect_ratio=aspect,
            width=job.width,
            height=job.height,
            fps=job.fps,
            seed=job.seed,
            engine=job.engine["engine"],
            job=job.to_dict(),
            extra_body=req.extra_body,
            callback_url=req.callback_url,
            ignored_fields=req.ignored_fields,
            base_url=base_url,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            **row,  # the quota check, expires_at, api
        )

    def _store_new(self, task_id: str, blobs, fields: dict) -> Task:
        """The inputs, then the task row (in a thread); nothing is left behind when either fails."""
        try:
            for blob in blobs:  # inside the try: a write that fails half-way leaves nothing behind
                self.storage.put_file(blob.key, blob.path, blob.content_type)
            return self.store.create(**fields)
        except BaseException:
            self.storage.delete_prefix(f"tasks/{task_id}/")
            raise

    # -- read ----------------------------------------------------------------------------

    async def get(self, task_id: str, owner: str) -> Task:
        task = await self.store.aget(task_id, owner)
        if task is None:
            raise NotFound(f"no task {task_id!r}", param="task_id", code="task_not_found")
        return task

    async def get_body(self, task_id: str, owner: str, base_url: str) -> bytes:
        """``render(get(...))`` as response bytes; from the memo of bodies (api/bodies.py) where
        the store reads inline, byte for byte the same."""
        inline = self.store.inline
        if inline is not None:
            try:
                # While nothing commits to the file, the body served last under its snapshot;
                # else the row's stamp, and the row itself only when the memo lacks that version.
                snapshot = inline.snapshot()
                body = self.bodies.current(snapshot, task_id, owner, base_url)
                if body is not None:
                    return body
                stamp = inline.stamp(task_id, owner)
                body = None if stamp is None else self.bodies.known(*stamp, base_url)
                rows = [] if stamp is None or body is not None else inline.get(task_id, owner)
            except sqlite3.Error:
                pass  # the usual way decides
            else:
                if body is None:
                    if not rows:  # none, or deleted between the two reads
                        raise NotFound(f"no task {task_id!r}", param="task_id", code="task_not_found")
                    body = self.bodies.body(rows[0], base_url)
                return self.bodies.keep_current(snapshot, task_id, owner, base_url, body)
        return encode(self.render(await self.get(task_id, owner), base_url))

    async def list_body(
        self, owner: str, base_url: str, *, limit: Any, after: str | None, status: str | None, model: str | None, order: str
    ) -> bytes:
        """The legacy list page as response bytes (``routes.page`` of the rendered tasks); from
        the memo of bodies where the store reads inline, byte for byte the same."""
        limit_n, status_v = self._list_params(limit, status, order)
        if self.store.inline is not None and status_v is None and model is None:
            try:
                convert, known = self.bodies.listed(base_url)
                items, has_more = self.store.inline.page(
                    owner, limit_n, after, order == "desc", convert, known, self.bodies.pages(base_url)
                )
            except sqlite3.Error:
                pass
            else:
                first, last = (items[0][0], items[-1][0]) if items else (None, None)
                return page_body([body for _, body in items if body is not None], first, last, has_more)
        tasks, has_more = await self.list(owner, limit=limit, after=after, status=status, model=model, order=order)
        bodies = [encode(obj) for obj in self.render_each(tasks, lambda t: self.render(t, base_url))]
        return page_body(bodies, tasks[0].id if tasks else None, tasks[-1].id if tasks else None, has_more)

    def _list_params(self, limit: Any, status: str | None, order: str) -> tuple[int, Status | None]:
        limit_n = _int_param("limit", limit, 20, 1, 100)
        status_v = None
        if status is not None:
            try:
                status_v = Status(status)
            except ValueError:
                raise InvalidRequest(
                    f"status must be one of {', '.join(s.value for s in Status)}; got {status!r}", param="status"
                ) from None
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be asc or desc; got {order!r}", param="order")
        return limit_n, status_v

    async def list(
        self, owner: str, *, limit: Any, after: str | None, status: str | None, model: str | None, order: str = "desc"
    ):
        limit_n, status_v = self._list_params(limit, status, order)
        return await self.store.alist(
            owner, limit=limit_n, after=after, status=status_v, model=model, newest_first=order == "desc"
        )

    # -- cancel / delete -----------------------------------------------------------------

    async def cancel(self, task_id: str, owner: str) -> Task:
        task = await self.get(task_id, owner)
        try:
            task = await asyncio.to_thread(
                self.store.fail, task_id, RawStatus.CANCELLED, "cancelled", "the task was cancelled by the client", "cancelled"
            )
        except IllegalTransition:
            raise Conflict(
                f"the task is already {task.status.value} ({task.raw_status.value}); only queued or in_progress tasks can be cancelled",
                param="task_id",
                code="task_not_cancellable",
            ) from None
        await self.runner.cancel(task_id)
        await self.task_changed(task)
        return task

    async def delete(self, task_id: str, owner: str) -> None:
        task = await self.get(task_id, owner)
        if not task.status.is_terminal():
            raise Conflict(
                f"the task is {task.status.value}; cancel it first, then delete it", param="task_id", code="task_not_finished"
            )
        await asyncio.to_thread(self.store.delete, task_id)
        await asyncio.to_thread(self.storage.delete_prefix, f"tasks/{task_id}/")

    async def expire_due(self) -> int:
        """EXPIRE the unfinished tasks whose ``execution_expires_after`` has passed, and stop
        them in the runner. Safe on several API servers at once: the store's guarded
        transition lets one of them win per task. Returns how many this call expired."""
        expired = 0
        for task in await asyncio.to_thread(self.store.expiring, time.time()):
            limit = round((task.expires_at or task.created_at) - task.created_at)
            try:
                task = await asyncio.to_thread(
                    self.store.fail,
                    task.id,
                    RawStatus.EXPIRED,
                    "expired",
                    f"the task did not finish within its execution_expires_after of {limit} s",
                )
            except (IllegalTransition, KeyError):
                continue  # it finished, or another server expired it, meanwhile
            await self.runner.cancel(task.id)
            await self.task_changed(task)
            expired += 1
        return expired

    async def sweep_retention(self) -> int:
        """Delete tasks (rows and files) that finished more than ``retention_hours`` ago."""
        if self.settings.retention_hours <= 0:
            return 0
        cutoff = time.time() - self.settings.retention_hours * 3600
        ids = await asyncio.to_thread(self.store.finished_before, cutoff)
        for task_id in ids:
            await asyncio.to_thread(self.storage.delete_prefix, f"tasks/{task_id}/")
            await asyncio.to_thread(self.store.delete, task_id)
        if ids:
            log.info("retention: deleted %d finished tasks", len(ids))
        return len(ids)

    async def sweep_leftovers(self) -> int:
        """Remove what a killed process left in storage: part files (``.part-*``) of writes that
        never finished, and task folders with no task row (a create killed after storing its
        inputs, a delete killed between the row and the files). Only what nobody has written to
        for ``LEFTOVER_GRACE`` seconds: another API server sharing the storage may be in the
        middle of a create, and no create or write takes that long. Returns how many it removed."""
        older_than = time.time() - LEFTOVER_GRACE
        found = await asyncio.to_thread(self.storage.leftovers, "tasks/", older_than)
        for key in found.parts:
            await asyncio.to_thread(self.storage.delete_prefix, key)
        with_row = await asyncio.to_thread(self.store.existing, found.folders)
        orphans = [task_id for task_id in found.folders if task_id not in with_row]
        for task_id in orphans:
            await asyncio.to_thread(self.storage.delete_prefix, f"tasks/{task_id}/")
        if found.parts or orphans:
            log.warning(
                "removed %d unfinished writes and %d task folders without a task, left by a killed process",
                len(found.parts),
                len(orphans),
            )
        return len(found.parts) + len(orphans)

    # -- content -------------------------------------------------------------------------

    async def content(
        self, task_id: str, owner: str | None, variant: str, token: str | None
    ) -> tuple[Task, LocalFile | Redirect | Stream]:
        """Where the file is. ``owner`` None means: authorised by ``token`` instead of a key."""
        if variant not in VARIANTS:
            raise InvalidRequest(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}", param="variant")
        if owner is None:
            task = await self.store.aget(task_id)
            # Tokens are ASCII (base64url); anything else is no token of ours (and no input for hmac).
            if task is None or token is None or not token.isascii() or not self.signer.verify(task_id, variant, token):
                raise NotFound(f"no task {task_id!r}", param="task_id", code="task_not_found")
        else:
            task = await self.get(task_id, owner)
        if task.raw_status is not RawStatus.COMPLETED:
            raise Conflict(
                f"the task is {task.status.value}; its video exists once it is completed",
                param="task_id",
                code="task_not_completed",
            )
        key = task.video_key if variant == "video" else task.last_frame_key
        if key is None:
            raise NotFound(
                "this task has no last frame (set extra_body.return_last_frame)", param="variant", code="content_not_found"
            )
        where = await asyncio.to_thread(self.storage.locate, key)
        if where is None:
            raise NotFound(
                "the file of this task is gone (retention or manual deletion)", param="task_id", code="content_not_found"
            )
        return task, where


_QUERY_INT = re.compile(r"^-?[0-9]{1,12}$", re.ASCII)  # int() would also take "٥", "５", " 5 ", "+5" and "1_0"


def _int_param(name: str, value: Any, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _QUERY_INT.match(value):
        n = int(value)
    else:
        raise InvalidRequest(f"{name} must be an integer; got {value!r}", param=name, code="invalid_type")
    if not lo <= n <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}; got {n}", param=name)
    return n
