"""``opendance worker``: runs the generate activities of some models on this machine's executors.

One Temporal worker per model polls that model's task queue, with as many activity slots as the
model's executor has for it (``--slots`` overrides): one per device group for model engines,
``cpu_slots`` for preview, ``relay_concurrency`` for relays, whose activities are asyncio
code in this process. A task takes a slot for its whole run. The activity:

1. moves the task QUEUED -> RUNNING in the store (``lifecycle``, the same as the local runner:
   counting the run; a task that already ran ``max_attempts`` times fails as ``interrupted``);
2. hands the job to the slot: a worker process (or a device group's ranks) calls ``run_job``,
   a relay runs ``RelayJob``; both keep checkpoints in storage, so a retried run resumes after
   the last checkpoint (a relay follows its upstream task);
3. heartbeats (progress, checkpoint step) while it runs and writes progress to the store (a
   GET never asks Temporal); a dead worker stops heartbeating and Temporal retries the task on
   another one after ``temporal_heartbeat_timeout``;
4. stops the engine at its next step when the workflow is cancelled, the store says the task is
   over (cancelled, deleted), or the run outlives ``task_timeout`` (then EXPIRED); an engine
   that does not stop within ``CANCEL_GRACE`` seconds has its process killed;
5. moves the task to COMPLETED or FAILED with guarded transitions, so a late or repeated
   activity can never move a task backwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from datetime import timedelta

from concurrent.futures import ThreadPoolExecutor

from ..config import Settings
from ..storage import make_storage
from ..store import TaskStore
from .executors import Executors
from .temporal_activity import GenerateActivity
from .temporal_workflow import connect, model_queue, worker_heartbeat_interval

log = logging.getLogger("opendance.worker")


async def serve_worker(settings: Settings, models: list[str]) -> None:
    """Run until SIGTERM or SIGINT, then stop polling, stop running engines (they resume
    elsewhere from their checkpoints) and exit."""
    from temporalio.worker import Worker

    known = settings.models()
    if unknown := [m for m in models if m not in known]:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; the models file has: {', '.join(known)}")
    if not models:
        raise SystemExit("give the models this worker serves: --models NAME [NAME ...]")
    executors = Executors(settings, make_storage(settings), known, served=models)
    try:
        executors.check()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    # Store and storage calls run in threads: hundreds of relay activities need more than
    # asyncio's default pool (cores + 4).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="io"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = TaskStore.from_url(settings.sqlalchemy_url)
    await executors.start()
    from temporalio.runtime import Runtime, TelemetryConfig

    # The worker process's own heartbeat: API servers list the workers whose last one is recent
    # (/readyz), so a killed worker leaves that list within about two heartbeat timeouts.
    hb = settings.temporal_heartbeat_timeout
    runtime = Runtime(telemetry=TelemetryConfig(), worker_heartbeat_interval=timedelta(seconds=worker_heartbeat_interval(hb)))
    client = await connect(settings.temporal_address, settings.temporal_namespace, runtime=runtime)
    identity = f"{socket.gethostname()}:{os.getpid()}"
    act = GenerateActivity(settings, store, executors.storage, executors, identity=identity)
    slots = {m: settings.worker_slots or _slots(executors, m) for m in models}
    workers = [
        Worker(
            client,
            task_queue=model_queue(settings.temporal_queue_prefix, m),
            activities=[act.generate],
            max_concurrent_activities=slots[m],
            # A relay model takes hundreds of slots: more pollers pick its tasks up faster (default 5).
            max_concurrent_activity_task_polls=max(5, min(20, slots[m] // 10)),
            graceful_shutdown_timeout=timedelta(seconds=1),
            # Activity heartbeats (progress, checkpoint step) reach Temporal at least every
            # quarter timeout, so a retry's "last heartbeat" is close to where the run got.
            max_heartbeat_throttle_interval=timedelta(seconds=max(1.0, hb / 4)),
            default_heartbeat_throttle_interval=timedelta(seconds=max(1.0, hb / 4)),
            identity=f"{identity}:{m}",
        )
        for m in models
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runs = [asyncio.create_task(w.run()) for w in workers]
    # Always printed (whatever the log level): scripts and tests wait for this line.
    served = ", ".join(
        f"{m} ({slots[m]} slot{'s' if slots[m] > 1 else ''}: {'/'.join(sorted(map(str, p)))})"
        for m, p in executors.placements().items()
    )
    print(f"worker {identity} serving {served}; devices {', '.join(settings.devices)}", file=sys.stderr, flush=True)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *runs], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    await executors.stop()
    store.close()
    if failed:
        raise RuntimeError(f"a Temporal worker stopped: {failed[0].exception()}")


def _slots(executors: Executors, model: str) -> int:
    """Tasks of ``model`` this worker takes at once: what its executor can run."""
    return max(executors.make(p.kind).capacity(p) for p in executors.placements()[model])
