"""The worker process: owns the engines for one device and runs one job at a time.

It is spawned (``processes.WorkerProcess``, never forked), so a crash, OOM or hang in torch
cannot take the API down. The parent talks to it over one pipe with the messages in
``messages.py``. A reader thread takes commands while a job runs, so a ``CancelJob`` reaches
the engine at its next step. When the pipe closes (the parent died), the worker exits at once:
the restarted server runs the task again.

In a device group of N ranks (``devices_per_task = N``) each rank is one such process, joined
with ``torch.distributed`` (gloo on CPU, nccl on CUDA). Every rank gets every job and runs the
engine; rank 0 alone encodes, stores and sends the task's events (progress, checkpoint, done,
failed); the others send only ``Idle`` when their part ends. Whether to stop is decided by all
ranks together (``_Group.any``), so they leave the engine at the same step.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import traceback
from multiprocessing.connection import Connection

from ..config import Settings
from ..engines.base import Job
from ..errors import Cancelled, EngineError
from ..logging import install as install_log_redaction
from ..storage import make_storage
from .checkpoints import TaskCheckpoints
from .execute import follow_job, run_job
from .engine_cache import EngineCache, is_oom, out_of_memory
from .messages import CancelJob, Checkpointed, Done, Failed, Idle, Progress, Ready, RunJob, Shutdown

log = logging.getLogger("opendance.worker")


class _Commands:
    """Reads the pipe on a thread: jobs go to a queue, cancels set a flag at once."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: queue.Queue[RunJob | None] = queue.Queue()
        self.cancelled: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="commands", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                # The parent is gone: nobody will store our result. Exit now, without cleanup
                # that could block; the server that starts next runs the task again.
                os._exit(0)
            if isinstance(msg, RunJob):
                self.jobs.put(msg)
            elif isinstance(msg, CancelJob):
                with self._lock:
                    self.cancelled.add(msg.task_id)
            elif isinstance(msg, Shutdown):
                self.jobs.put(None)
                return

    def is_cancelled(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self.cancelled

    def forget(self, task_id: str) -> None:
        with self._lock:
            self.cancelled.discard(task_id)


def worker_main(
    conn: Connection, device: str, settings: Settings, rank: int = 0, world_size: int = 1, init_method: str | None = None
) -> None:
    name = device if world_size == 1 else f"{device} rank {rank}/{world_size}"
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s worker[{name}] %(levelname)s %(message)s")
    install_log_redaction()  # the worker's lines go to the same log as the server's
    storage = make_storage(settings)
    tmp_dir = settings.data_dir / "tmp"
    commands = _Commands(conn)
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            conn.send(msg)

    engines = EngineCache(device, settings.device_memory, send if rank == 0 else lambda msg: None)

    group = _Group(device, rank, world_size, init_method) if world_size > 1 else None
    send(Ready(device=device, pid=os.getpid(), rank=rank))
    while (cmd := commands.jobs.get()) is not None:
        task_id = cmd.task_id
        local = functools.partial(commands.is_cancelled, task_id)
        together = functools.partial(_any_rank, group, local) if group is not None else local
        if rank == 0:
            _lead(cmd, device, settings, storage, tmp_dir, engines, send, local, together)
        else:
            send(Idle(task_id, rank, _follow(cmd, device, settings, storage, engines, together)))
        commands.forget(task_id)
    engines.close()
    if group is not None:
        group.close()


def _any_rank(group: _Group, local) -> bool:
    """Cancelled on any rank of the group (each rank asks its own command queue)."""
    return group.any(local())


def _lead(cmd: RunJob, device, settings, storage, tmp_dir, engines, send, cancelled, engine_cancelled) -> None:
    """Run a job and report it: rank 0 (or a process of its own)."""
    task_id = cmd.task_id
    try:
        # Made per job, not at start: a scratch folder that cannot be made fails the task
        # with a storage_error instead of making every restarted worker die at birth.
        tmp_dir.mkdir(parents=True, exist_ok=True)
        job = Job.from_dict(cmd.job)
        engine = engines.get(job.engine, job.model)
        result = run_job(
            job,
            engine,
            storage,
            progress=lambda p: send(Progress(task_id, p)),
            cancelled=cancelled,
            engine_cancelled=engine_cancelled,
            tmp_dir=tmp_dir,
            checkpoints=TaskCheckpoints(
                storage, task_id, settings.checkpoint_every, on_saved=lambda step: send(Checkpointed(task_id, step))
            ),
        )
        send(Done(task_id, result.video_key, result.last_frame_key, result.engine_seconds, result.wall_seconds))
    except Cancelled:
        send(Failed(task_id, "cancelled", "the task was cancelled", cancelled=True))
    except EngineError as exc:
        send(Failed(task_id, exc.code, str(exc)))
    except MemoryError:
        send(Failed(task_id, "out_of_memory", "the worker ran out of memory making this video"))
    except OSError as exc:
        # A full disk or a failing write: this task fails, the worker keeps serving.
        log.error("task %s: storage error\n%s", task_id, traceback.format_exc())
        send(Failed(task_id, "storage_error", f"the video could not be stored: {exc.strerror or exc}"))
    except Exception as exc:
        if is_oom(exc):  # torch.OutOfMemoryError (a RuntimeError): the numbers, and the device cache emptied
            send(Failed(task_id, "out_of_memory", str(out_of_memory(exc, device, "making this video"))))
            return
        log.error("task %s failed\n%s", task_id, traceback.format_exc())
        send(Failed(task_id, "engine_error", f"{type(exc).__name__}: {exc}"))


def _follow(cmd: RunJob, device, settings, storage, engines, cancelled) -> str | None:
    """A rank other than 0: the same engine run, nothing stored or reported. Returns the error."""
    try:
        job = Job.from_dict(cmd.job)
        engine = engines.get(job.engine, job.model)
        checkpoints = TaskCheckpoints(storage, cmd.task_id, settings.checkpoint_every, read_only=True)
        follow_job(job, engine, storage, cancelled=cancelled, checkpoints=checkpoints)
    except Cancelled:
        return None
    except Exception as exc:
        log.error("task %s failed on this rank\n%s", cmd.task_id, traceback.format_exc())
        return f"{type(exc).__name__}: {exc}"
    return None


class _Group:
    """This rank's membership of its device group (``torch.distributed``)."""

    def __init__(self, device: str, rank: int, world_size: int, init_method: str | None) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(device)
        self.device = device if cuda else "cpu"
        dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world_size)
        log.info("rank %d of %d joined its group (%s)", rank, world_size, dist.get_backend())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: one small all-reduce."""
        t = self.torch.tensor([1 if flag else 0], dtype=self.torch.int32, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:
            pass
