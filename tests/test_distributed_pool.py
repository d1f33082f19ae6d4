"""The session's pool of 2 gloo processes (``ddp_pool``, ``ddp_helpers.DDPPool``): results in rank
order, tasks independent of each other, and a failing task fails fast with its traceback."""

import pytest
import torch
import torch.distributed as dist
from ddp_helpers import DDPError


def _sum_ranks(rank: int, x: torch.Tensor) -> dict:
    y = x * (rank + 1)
    dist.all_reduce(y)
    return {"rank": rank, "world": dist.get_world_size(), "sum": y, "draw": torch.rand(3),
            "threads": torch.get_num_threads()}


def _dirty(rank: int) -> None:
    """Leave state behind that the next task must not see."""
    torch.manual_seed(1234 + rank)
    torch.set_num_threads(2)


def _fail(rank: int) -> None:
    raise ValueError(f"task failed on rank {rank}")


def test_results_in_rank_order_and_tasks_start_from_a_clean_state(ddp_pool):
    first = ddp_pool.run(_sum_ranks, torch.arange(3.0))
    assert [r["rank"] for r in first] == [0, 1] and all(r["world"] == 2 for r in first)
    assert all(torch.equal(r["sum"], torch.arange(3.0) * 3) for r in first)
    ddp_pool.run(_dirty)
    second = ddp_pool.run(_sum_ranks, torch.ones(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["draw"], b["draw"]) and b["threads"] == 1  # reseeded, one thread


def test_a_failing_task_raises_its_traceback_and_the_pool_restarts(ddp_pool):
    starts = ddp_pool.starts
    with pytest.raises(DDPError) as e:
        ddp_pool.run(_fail, timeout=60)
    text = str(e.value)
    assert "task _fail failed" in text and "--- rank 0:" in text and "--- rank 1:" in text
    assert "ValueError: task failed on rank 1" in text and "in _fail" in text  # the worker's traceback
    # the failed pool was torn down (a rank might wait in a collective); the next task starts a new one
    assert ddp_pool.run(_sum_ranks, torch.ones(1))[1]["sum"].item() == 3
    assert ddp_pool.starts == starts + 1
