"""Data-parallel benchmarks under ``accelerate launch`` (several GPUs, or CPU processes): every process loads the
model on its own device, takes every P-th batch of a cell (whole batches, so each image is made exactly as one
process makes it), and the batches are gathered, in seed order, on every process; only the main one scores and
writes. Run as one process (``python -m ...``), nothing changes."""
from __future__ import annotations


def _state():
    from ..models.loading import accelerator_state

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
