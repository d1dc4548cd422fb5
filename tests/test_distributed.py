"""Distributed training on 2 CPU processes (gloo): DDP equals single-process training."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contractssm.layers import CentaurusNetwork

STEPS, LR, GLOBAL_BATCH = 3, 0.05, 8


def _model() -> CentaurusNetwork:
    torch.manual_seed(0)
    return CentaurusNetwork(
        2,
        [6, 6],
        ["full", "s5"],
        num_states=4,
        state_blocks=2,
        num_classes=3,
        use_activations=False,
    )


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 2, 48, generator=gen), torch.randint(
        0, 3, (GLOBAL_BATCH,), generator=gen
    )


def _train(model, x, y, steps=STEPS):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _worker(rank: int, world: int, init_file: str, out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        x, y = _data()
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        if mode == "share":
            _share(rank, out_dir)
            return
        model = _model()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            wrapped = fully_shard(model)
        _train(wrapped, x[shard], y[shard])
        if mode == "ddp":
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state = {
                k: v.full_tensor().detach().clone() if hasattr(v, "full_tensor") else v
                for k, v in model.state_dict().items()
            }
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _share(rank: int, out_dir: str) -> None:
    import contractssm
    from contractssm.distributed import share_plans
    from contractssm.planner.cache import PlanCache

    cache = PlanCache(directory=None)
    sizes = {"b": 2, "c": 4, "d": 4, "n": 2, "m": 4, "l": 64}
    contractssm.plan("neck", sizes, autotune=2, requires_grad=True, cache=cache)
    shared = share_plans(cache)
    plan = contractssm.plan("neck", sizes, autotune=2, requires_grad=True, cache=cache)
    with open(os.path.join(out_dir, f"plan{rank}.json"), "w") as fh:
        fh.write(f"{shared}\n{plan.to_json()}")


def _run(tmp_path, mode: str):
    init_file = str(tmp_path / "init")
    mp.start_processes(
        _worker, args=(2, init_file, str(tmp_path), mode), nprocs=2, join=True, start_method="spawn"
    )
    if mode == "share":
        return [(tmp_path / f"plan{r}.json").read_text() for r in range(2)]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ddp_matches_single_process(tmp_path):
    ranks = _run(tmp_path, "ddp")
    x, y = _data()
    single = _train(_model(), x, y).state_dict()
    worst_ranks = max((ranks[0][k] - ranks[1][k]).abs().max().item() for k in single)
    worst_single = max((ranks[0][k] - single[k]).abs().max().item() for k in single)
    print(f"DDP: rank 0 vs rank 1 {worst_ranks:.2e}; DDP vs single process {worst_single:.2e}")
    assert worst_ranks == 0.0
    assert worst_single <= 1e-5


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_fsdp_matches_single_process(tmp_path):
    ranks = _run(tmp_path, "fsdp")
    x, y = _data()
    single = _train(_model(), x, y).state_dict()
    worst = max((ranks[0][k] - single[k]).abs().max().item() for k in single)
    print(f"FSDP (fully_shard): vs single process {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_share_plans_gives_every_rank_rank0s_plan(tmp_path):
    first, second = _run(tmp_path, "share")
    print(first.splitlines()[0], second.splitlines()[0])
    assert first == second and int(first.splitlines()[0]) >= 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
