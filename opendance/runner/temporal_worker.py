"""``opendance worker``: runs the generate activities of some models on this machine's devices.

One Temporal worker per model polls that model's task queue, with one activity slot per device
by default; a task takes a free device process (``devices.py``) for its whole run. The activity:

1. moves the task QUEUED -> RUNNING in the store (counting the run; a task that already ran
   ``max_attempts`` times fails as ``interrupted`` instead);
2. hands the job to the device process, which calls ``run_job`` (the same code as the local
   runner) with checkpoints in storage, so a retried run resumes after the last checkpoint;
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

from ..config import Settings
from ..storage import make_storage
from ..store import TaskStore
from .devices import DevicePool
from .temporal_activity import GenerateActivity
from .temporal_workflow import connect, model_queue

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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = TaskStore.from_url(settings.sqlalchemy_url)
    pool = DevicePool(list(settings.devices), settings)
    await pool.start()
    client = await connect(settings.temporal_address, settings.temporal_namespace)
    act = GenerateActivity(settings, store, make_storage(settings), pool)
    slots = settings.worker_slots or len(settings.devices)
    identity = f"{socket.gethostname()}:{os.getpid()}"
    workers = [
        Worker(
            client,
            task_queue=model_queue(settings.temporal_queue_prefix, m),
            activities=[act.generate],
            max_concurrent_activities=slots,
            graceful_shutdown_timeout=timedelta(seconds=1),
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
    print(f"worker {identity} serving {', '.join(models)} on {', '.join(settings.devices)} ({slots} slot(s) per model)",
          file=sys.stderr, flush=True)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *runs], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    pool.close()
    store.close()
    if failed:
        raise RuntimeError(f"a Temporal worker stopped: {failed[0].exception()}")
