"""Shared plumbing of the 2-process gloo tests: a session-wide pool of persistent workers.

Starting a process, importing torch and joining a process group cost several seconds per
spawn, far more than the tests' work, so the DDP tests share one :class:`DDPPool` (the
``ddp_pool`` fixture of ``conftest.py``): ``world_size`` processes started with the spawn
method that join one gloo group once, then run tasks until the session ends. A task is a
module-level function (pickled by reference) called as ``fn(rank, *args)`` on every rank; its
return values come back in rank order, and an exception on any rank fails the caller with that
rank's traceback. Tasks must leave the process group alone (no ``destroy_process_group``); each
starts from ``torch.manual_seed(SEED)``, one intra-op thread and grad mode on.

Arguments and results travel as ``torch.save`` files in the pool's folder (memory-mapped when
read). Every wait has a timeout: a task that fails on one rank, hangs or kills a worker fails
the test within seconds to minutes (the pool is then torn down, since a rank may be stuck in a
collective, and restarted by the next task).
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TASK_TIMEOUT = 300.0  # seconds a task may run (every rank) before the pool is torn down
COLLECTIVE_TIMEOUT = timedelta(seconds=120)  # a rank left waiting in a collective gives up
SEED = 0  # every task starts from torch.manual_seed(SEED)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world_size: int, port: int, timeout: timedelta | None = None) -> None:
    """Join a CPU (gloo) process group on 127.0.0.1:``port``, one intra-op thread per process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group("gloo", rank=rank, world_size=world_size, **kwargs)
    torch.set_num_threads(1)


def _save(value: Any, path: Path) -> Path:
    """Tensors travel through files (written once, memory-mapped by the readers): several times
    faster than pickling hundreds of MB of weights through a queue's pipe, and unlike
    shared-memory handles it neither moves the sender's tensors nor holds a descriptor each."""
    torch.save(value, path)
    return path


def _load(path: Path) -> Any:
    # mmap: copy-on-write pages of the file, so a task may modify its arguments in place
    return torch.load(path, mmap=True, weights_only=False)


def _reset_state() -> None:
    """What every task starts from, whatever the previous task did."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.set_grad_enabled(True)
    torch.set_default_dtype(torch.float32)


def _pool_worker(rank: int, world_size: int, port: int, tasks: Any, results: Any) -> None:
    """A pool process: join the group once, then run ``(task id, fn, args)`` until ``None``."""
    try:
        join_gloo(rank, world_size, port, COLLECTIVE_TIMEOUT)
    except BaseException:
        results.put(("error", -1, rank, traceback.format_exc()))
        raise
    results.put(("ready", -1, rank, None))
    while (item := tasks.get()) is not None:
        task_id, payload = item
        try:
            fn, args = _load(payload)
            _reset_state()
            value = fn(rank, *args)
            results.put(("ok", task_id, rank, _save(value, payload.with_name(f"{payload.stem}-rank{rank}.pt"))))
        except BaseException:
            results.put(("error", task_id, rank, traceback.format_exc()))
    dist.destroy_process_group()


class DDPError(RuntimeError):
    """A pool task failed on some rank, timed out, or a worker died."""


class Task:
    """A task submitted to the pool; :meth:`result` waits for the return values of all ranks."""

    def __init__(self, pool: DDPPool, task_id: int, name: str, timeout: float) -> None:
        self.pool, self.task_id, self.name = pool, task_id, name
        self.deadline = time.monotonic() + timeout  # counted from the submit
        self._values: list[Any] | None = None

    def result(self) -> list[Any]:
        """``[fn(0, *args), fn(1, *args), ...]``; raises :class:`DDPError` with the failing ranks'
        tracebacks (the pool is then restarted on the next submit)."""
        if self._values is None:
            self._values = self.pool._collect(self)
        return self._values


class DDPPool:
    """``world_size`` persistent spawn processes in one gloo group on 127.0.0.1 (see module doc).

    ``run(fn, *args)`` waits for the result; ``submit`` returns a :class:`Task` at once. One task
    runs at a time. Arguments are saved at submit, so later in-place changes in the caller (e.g.
    the reference step of the same method) do not reach the workers. On a 2-core machine, do not
    compute in the caller while a task runs: its OpenMP threads and the two workers oversubscribe
    the cores, which made both sides several times slower than running one after the other. A
    failed or timed-out task tears the pool down; the next submit starts a new one.
    """

    def __init__(self, world_size: int = 2, workdir: str | os.PathLike | None = None) -> None:
        self.world_size = world_size
        self._own_dir = workdir is None  # a temporary folder, removed by close()
        self.workdir = Path(tempfile.mkdtemp(prefix="ddp-pool-") if workdir is None else workdir)
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._tasks: list[Any] = []
        self._results: Any = None
        self._next_id = 0
        self._running: Task | None = None
        self.starts = 0  # how many times the processes were started (1 unless a task failed)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the processes (non-blocking); they join the group in the background."""
        if self._procs:
            return
        port = free_port()
        self._results = self._ctx.Queue()
        self._tasks = [self._ctx.Queue() for _ in range(self.world_size)]
        for rank in range(self.world_size):
            p = self._ctx.Process(target=_pool_worker, args=(rank, self.world_size, port, self._tasks[rank],
                                                             self._results), daemon=True, name=f"ddp-pool-{rank}")
            p.start()
            self._procs.append(p)
        self.starts += 1

    def close(self, force: bool = False) -> None:
        """Stop the workers: ask them to leave (or, with ``force``, kill them) and join them."""
        if not force and self._procs and self._running is None:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=30)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        for q in [*self._tasks, self._results]:
            if q is not None:
                q.close()
                q.cancel_join_thread()
        self._procs, self._tasks, self._results = [], [], None
        self._running = None
        for path in self.workdir.glob("task-*.pt"):
            path.unlink()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ tasks
    def submit(self, fn: Callable[..., Any], *args: Any, timeout: float = TASK_TIMEOUT) -> Task:
        """Run ``fn(rank, *args)`` on every rank; ``fn`` must be a module-level function."""
        if self._running is not None:
            raise RuntimeError(f"task {self._running.name} is still running: call its result() first")
        self._next_id += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        payload = _save((fn, args), self.workdir / f"task-{self._next_id}.pt")
        self.start()  # the queues hold the task until the workers have joined the group
        task = Task(self, self._next_id, getattr(fn, "__qualname__", repr(fn)), timeout)
        for q in self._tasks:
            q.put((task.task_id, payload))
        self._running = task
        return task

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = TASK_TIMEOUT) -> list[Any]:
        """``submit(...).result()``: the return values of ``fn(rank, *args)`` in rank order."""
        return self.submit(fn, *args, timeout=timeout).result()

    def _get(self, deadline: float, what: str) -> tuple[str, int, int, Any]:
        """The next message from the workers, checking every second that they are alive."""
        while True:
            try:
                return self._results.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [f"rank {r} (exit code {p.exitcode})" for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    self.close(force=True)
                    raise DDPError(f"{what}: worker died: {', '.join(dead)}") from None
                if time.monotonic() >= deadline:
                    self.close(force=True)
                    raise DDPError(f"{what}: no result after the timeout; pool torn down") from None

    def _collect(self, task: Task) -> list[Any]:
        if self._running is not task:
            raise RuntimeError(f"task {task.name} is not the pool's running task")
        what = f"task {task.name}"
        values: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = task.deadline
        try:
            while len(values) + len(errors) < self.world_size:
                try:
                    kind, task_id, rank, value = self._get(deadline, what)
                except DDPError as e:
                    if errors:  # the other ranks are stuck waiting for the failed one
                        raise DDPError(_error_text(what, errors) + f"\n(then: {e})") from None
                    raise
                if kind == "ready":
                    continue
                if kind == "error" and task_id == -1:
                    errors[rank] = f"joining the gloo group failed:\n{value}"
                    deadline = min(deadline, time.monotonic() + 10.0)
                    continue
                if task_id != task.task_id:
                    continue  # a late message of an earlier task
                if kind == "error":
                    errors[rank] = value
                    # the others may now wait in a collective forever: give them a little time
                    deadline = min(deadline, time.monotonic() + 10.0)
                else:
                    values[rank] = _load(value)
                    value.unlink()  # the mapping stays valid
        finally:
            self._running = None
            (self.workdir / f"task-{task.task_id}.pt").unlink(missing_ok=True)
        if errors:
            self.close(force=True)
            raise DDPError(_error_text(what, errors))
        return [values[r] for r in range(self.world_size)]


def _error_text(what: str, errors: dict[int, str]) -> str:
    return f"{what} failed:\n" + "\n".join(f"--- rank {r}:\n{errors[r]}" for r in sorted(errors))
