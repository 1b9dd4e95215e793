"""Data-parallel training: the process group, and the collectives the training step uses.

``torchrun --nproc-per-node P -m smcli train ...`` starts P processes; each trains on its own
part of every batch, and together they compute the loss one process would compute on the
whole batch. The embeddings and the per-side tensors the matcher scores are gathered with
their gradients (as open_clip's loss gathers features with ``gather_with_grad``), so the
hardest negatives and the mined negatives come from the whole batch; each process then
adds the loss terms of its own positives, and summing the gradients over the processes
gives the gradient of the whole batch's loss. A naive per-process loss (every process
ranking within its own slice) trains a different model.

The ranks come from torchrun's variables (multi-node through its rendezvous), or from
Slurm's, mapped as open_clip maps them (``SLURM_PROCID`` -> ``RANK``, ``SLURM_LOCALID`` ->
``LOCAL_RANK``, ``SLURM_NTASKS`` -> ``WORLD_SIZE``; ``MASTER_ADDR``/``MASTER_PORT`` set by
the job script). gloo on the CPU, nccl on CUDA (one device per local rank).

In one process :data:`SINGLE` stands in: every method is the identity, so training in one
process runs exactly the code (and gives exactly the numbers) it did before.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from smcli.errors import SmcliError, UsageError

# test hooks (hidden; tests/test_ddp.py): kill a process at a step, train with the naive loss
KILL_AT_ENV = "SMCLI_TEST_KILL_AT"  # "RANK:EPOCH:STEP" (epoch counted from 1, step from 0)
NAIVE_LOSS_ENV = "SMCLI_TEST_NAIVE_LOSS"  # "1": each process ranks within its own slice


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def world_from_environment() -> tuple[int, int, int]:
    """(local rank, rank, world size) from torchrun's or Slurm's variables (open_clip's order)."""
    return (_env_int("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
            _env_int("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", default=0),
            _env_int("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", default=1))


@dataclass(frozen=True)
class World:
    """The processes training one model (one, :data:`SINGLE`, unless launched by torchrun or Slurm)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    naive_loss: bool = False  # test-only negative control

    @property
    def is_main(self) -> bool:
        """Process 0 evaluates val, chooses, logs and writes the model directory."""
        return self.rank == 0

    @property
    def gathers(self) -> bool:
        """Whether batches are split over processes and their parts gathered."""
        return self.size > 1 and not self.naive_loss

    def device(self, device: str) -> str:
        """This process's device: ``cuda`` means ``cuda:LOCAL_RANK`` when there are several."""
        if self.size == 1:
            return device
        if device.startswith("cuda:"):
            raise UsageError(f"--device {device}: with {self.size} processes each takes cuda:LOCAL_RANK; "
                             "give --device cuda (or auto)")
        if device == "cuda":
            device = f"cuda:{self.local_rank}"
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        return device

    # -- the batch --------------------------------------------------------------------------
    def bounds(self, n: int) -> tuple[int, int]:
        """This process's rows of n: [floor(rank n / P), floor((rank + 1) n / P))."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def part(self, n: int) -> np.ndarray | slice:
        """Positions of this process's part of n items, padded to ceil(n / P) by repeating one
        (every process must send tensors of one shape; :meth:`gather` drops the repeats)."""
        if not self.gathers:
            return slice(None)
        start, stop = self.bounds(n)
        take = np.arange(start, stop)
        pad = -(-n // self.size) - len(take)
        return np.concatenate([take, np.full(pad, max(start, stop - 1) if stop else 0)]) if pad else take

    def rows(self, n: int, device: str) -> torch.Tensor | None:
        """The batch positions whose loss terms this process adds (None: all, in one process)."""
        if not self.gathers:
            return None
        return torch.arange(*self.bounds(n), device=device)

    def gather(self, *parts: tuple[Any, int]) -> list:
        """Each (:class:`~smcli.models.matchers.Side`, n) of this process's part of n items ->
        the Side of all n items in batch order, from every process's part. Gradients flow
        back to the process that encoded a row. All the tensors that carry a gradient travel
        in one collective each way, so every process's backward meets the same collectives
        in the same order, whatever the shape of its own part of the graph."""
        if not self.gathers:
            return [side for side, _ in parts]
        with_grad = [(k, f.name) for k, (side, _) in enumerate(parts) for f in fields(side)
                     if (t := getattr(side, f.name)) is not None and t.requires_grad]
        whole: dict[tuple[int, str], torch.Tensor] = {}
        if with_grad:
            outs = _GatherRows.apply(self.rank, self.size, *(getattr(parts[k][0], name) for k, name in with_grad))
            whole.update(zip(with_grad, outs))
        result = []
        for k, (side, n) in enumerate(parts):
            chunk = -(-n // self.size)
            keep = torch.from_numpy(np.concatenate(
                [np.arange(r * chunk, r * chunk + (r + 1) * n // self.size - r * n // self.size)
                 for r in range(self.size)]))
            values = {}
            for f in fields(side):
                t = getattr(side, f.name)
                if t is not None:
                    t = whole[k, f.name] if (k, f.name) in whole else _gather_plain(t, self.size)
                    t = t.index_select(0, keep.to(t.device))
                values[f.name] = t
            result.append(replace(side, **values))
        return result

    # -- after backward ---------------------------------------------------------------------
    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Every process's gradient becomes the sum over processes (one all-reduce); the
        average in naive mode. A parameter without a gradient anywhere keeps none."""
        if self.size == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        device = params[0].device
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [torch.tensor([float(p.grad is not None) for p in params],
                                                           device=device)])
        _collective(torch.distributed.all_reduce, flat)
        if self.naive_loss:
            flat /= self.size
        at = 0
        has = flat[-len(params):]
        for k, p in enumerate(params):
            if has[k] > 0:
                p.grad = flat[at:at + p.numel()].view_as(p).to(p.dtype).clone()
            at += p.numel()

    def sum_values(self, *values: float) -> list[float]:
        """Numbers summed over processes (each process's loss terms -> the batch's loss)."""
        if not self.gathers:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        _collective(torch.distributed.all_reduce, t)
        return t.tolist()

    # -- process 0's decisions ----------------------------------------------------------------
    def broadcast_object(self, obj: Any) -> Any:
        """Process 0's ``obj`` (a picklable value) on every process."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        _collective(torch.distributed.broadcast_object_list, box, src=0)
        return box[0]

    def broadcast_module(self, model: torch.nn.Module) -> None:
        """Process 0's parameters and buffers on every process (after it chose on val)."""
        if self.size == 1:
            return
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                _collective(torch.distributed.broadcast, t.data, src=0)

    def barrier(self) -> None:
        if self.size > 1:
            _collective(torch.distributed.barrier)

    @contextlib.contextmanager
    def main_first(self, local: bool = False) -> Iterator[None]:
        """Process 0 (``local``: of each machine) runs the block before the others (it fills
        a cache the others then read)."""
        first = (self.local_rank if local else self.rank) == 0
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def quiet(self) -> contextlib.AbstractContextManager:
        """Process 0 says the run's lines; the others' go nowhere (their errors still end them
        with one line each)."""
        if self.is_main:
            return contextlib.nullcontext()
        import io

        return contextlib.redirect_stderr(io.StringIO())

    def dropout_seed(self, seed: int, epoch: int, step: int) -> None:
        """With several processes, dropout's generator is seeded from (seed, epoch, step,
        rank) before every step, so --resume continues every process's stream exactly.
        (One process keeps today's single stream, saved in the checkpoint.)"""
        if self.size > 1:
            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, step, self.rank]).generate_state(1)[0]))

    def test_hook(self, epoch: int, step: int) -> None:
        """Test-only: SIGKILL this process at (epoch, step) when $SMCLI_TEST_KILL_AT says so."""
        spec = os.environ.get(KILL_AT_ENV)
        if spec and spec.split(":") == [str(self.rank), str(epoch + 1), str(step)]:
            os.kill(os.getpid(), signal.SIGKILL)

    def leave(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) \
            if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


SINGLE = World()


def join_world(device: str) -> World:
    """The process group this process belongs to (torchrun or Slurm), or :data:`SINGLE`.
    ``device`` (resolved: cpu, cuda, cuda:N) picks the backend: nccl on CUDA, gloo on CPU."""
    local_rank, rank, size = world_from_environment()
    if size <= 1:
        return SINGLE
    if not torch.distributed.is_available():
        raise UsageError("this torch build has no torch.distributed: train in one process")
    for name, value in (("LOCAL_RANK", local_rank), ("RANK", rank), ("WORLD_SIZE", size)):
        os.environ.setdefault(name, str(value))  # Slurm's variables as torch's (open_clip does this)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UsageError(f"{size} processes but no {' or '.join(missing)}: launch with torchrun, "
                         "or export them in the Slurm job script")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not torch.distributed.is_initialized():
        _collective(torch.distributed.init_process_group, backend=backend, rank=rank, world_size=size)
    return World(rank=rank, size=size, local_rank=local_rank,
                 naive_loss=os.environ.get(NAIVE_LOSS_ENV) == "1")


def connected_zero(*sides) -> torch.Tensor:
    """Zero, computed from every tensor of ``sides`` that carries a gradient: a process with
    nothing to score in a step still runs the gathers' backward, which the others wait for."""
    parts = [getattr(s, f.name) for s in sides for f in fields(s)]
    return sum((t.sum() * 0 for t in parts if t is not None and t.requires_grad), torch.zeros(()))


def _collective(fn, *args, **kwargs):
    """A collective call; a process that went away is one clear line, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except torch.distributed.DistError as exc:
        from smcli.errors import first_line

        raise SmcliError(f"distributed training stopped: another process failed or went away "
                         f"({first_line(exc, 120)}); relaunch the same command with --resume") from None


def _gather_plain(t: torch.Tensor, size: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(size)]
    _collective(torch.distributed.all_gather, parts, t.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All-gather along rows, with the gradient (open_clip's ``gather_with_grad``): forward
    gathers every process's rows of each tensor, backward sums every process's gradient of
    the gathered tensors and keeps this process's rows. Each way is one collective over the
    tensors flattened together (in float32, which holds bf16 and fp32 exactly); backward
    uses an all-reduce, which gloo and nccl both have."""

    @staticmethod
    def forward(ctx, rank: int, size: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.rank, ctx.size = rank, size
        ctx.shapes = [t.shape for t in tensors]
        flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
        every = _gather_plain(flat, size).reshape(size, -1)
        out, at = [], 0
        for t in tensors:
            out.append(every[:, at:at + t.numel()].reshape(size * len(t), *t.shape[1:]).to(t.dtype, copy=True))
            at += t.numel()
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        flat = torch.cat([g.float().reshape(-1) for g in grads])
        _collective(torch.distributed.all_reduce, flat)
        mine, at = [], 0
        for shape, g in zip(ctx.shapes, grads):
            whole = flat[at:at + g.numel()].reshape(ctx.size, *shape)
            mine.append(whole[ctx.rank].to(g.dtype))
            at += g.numel()
        return (None, None, *mine)
