"""Data-parallel runs under ``accelerate launch`` (several GPUs, or CPU processes over gloo). Run as one process
(``python -m ...``), every function here is the identity and nothing changes.

Benchmarks: every process loads the model on its own device, takes every P-th batch of a cell (whole batches,
so each image is made exactly as one process makes it), and the batches are gathered, in seed order, on every
process; only the main one scores and writes.

Training (NLC): every process draws the same whole batch and the same noise (same seeds), runs the frozen
denoiser, the costly part, on its own rows only (``rows``), and the rows are gathered (``gather_rows``): each
process then takes the one-process step on the whole batch, up to float rounding, and only the main one writes.
"""
from __future__ import annotations


def _state():
    from .models.loading import accelerator_state

    return accelerator_state()


def count() -> int:
    return _state().num_processes


def is_main() -> bool:
    return _state().is_main_process


def share(items: list) -> list:
    """This process's part of ``items``: every P-th, from its index."""
    state = _state()
    return items[state.process_index::state.num_processes]


def gather(items: list) -> list:
    """Every process's ``items``, concatenated in process order (picklable objects; tensors on the CPU)."""
    state = _state()
    if state.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def wait_for_everyone():
    _state().wait_for_everyone()


def rows(batch_size: int) -> slice:
    """This process's rows of a whole batch of ``batch_size`` (equal parts, so ``gather_rows`` can gather them)."""
    state = _state()
    if batch_size % state.num_processes:
        raise ValueError(f"the batch size ({batch_size}) must be a multiple of the number of processes "
                         f"({state.num_processes})")
    part = batch_size // state.num_processes
    return slice(state.process_index * part, (state.process_index + 1) * part)


def gather_rows(x):
    """The whole batch from every process's rows of it (a tensor, concatenated in process order)."""
    if count() == 1:
        return x
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(count())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast(tensors) -> None:
    """Overwrite ``tensors`` in place with the main process's (every process starts a training run from the
    same weights, whatever its random state was)."""
    if count() == 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, src=0)


def anyone(flag: bool) -> bool:
    """True on every process when it is true on any (a stop one process sees stops them all at the same step)."""
    if count() == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=_state().device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
