"""How one job runs under a launcher: DDP ranks, a GPU per parallel job, a clean slate after.

Launchers (conf/hydra/launcher/): the default runs a sweep's jobs one after another in this
process; `parallel` (joblib) and `local` (submitit) run each job in a worker process; `slurm`
submits each job with sbatch, one task per GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def launch_rank() -> int:
    """This process's global rank, known before the Trainer exists (DDP children get LOCAL_RANK,
    SLURM tasks SLURM_PROCID): files shared by all ranks are written by rank 0 only. Where
    Lightning is loaded, its rank (a strategy may have set it); else the same environment variables
    it reads, in its order (lightning/fabric/utilities/rank_zero.py): stage=prepare never imports it."""
    if "lightning" in sys.modules:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return int(getattr(rank_zero_only, "rank", 0))
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


def launcher_name(hc) -> str:
    """The class Hydra launches jobs with: BasicLauncher, JoblibLauncher, LocalLauncher, SlurmLauncher."""
    return str(hc.launcher.get("_target_", "")).rsplit(".", 1)[-1]


def reset_distributed(saved: dict) -> None:
    """Destroy this job's process group and put back the env vars Lightning's launcher set.

    The launcher leaves LOCAL_RANK=0, MASTER_PORT ... in os.environ; the next DDP job of a sweep
    would take them to mean "started by torchrun" and wait forever for ranks nobody starts.
    """
    dist = sys.modules.get("torch.distributed")  # not imported: no group to destroy (and exit stays fast)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def one_gpu_per_parallel_job(cfg, hc):
    """Under hydra/launcher=parallel on a multi-GPU machine: pin this job to a free GPU."""
    if launcher_name(hc) != "JoblibLauncher" or cfg.train.accelerator == "cpu":
        return None
    import torch
    from omegaconf import open_dict

    from recipe_runner.train.devices import claim_gpu

    count = torch.cuda.device_count()
    if count < 2 or cfg.train.devices not in ("auto", 1):
        return None
    k, lock = claim_gpu(Path(hc.sweep.dir) / ".devices", count)
    with open_dict(cfg):
        cfg.train.devices = [k]
    return lock


def ddp_children_rerun_this_job(hc, run_dir: Path, strategy: str = "ddp") -> None:
    """Make Lightning's DDP launcher (fsdp uses it too) start this job's other ranks, not the whole sweep again.

    Lightning starts ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir=<hydra.run.dir>`.
    In a sweep sys.argv still holds `-m` and every swept value, and hydra.run.dir is not the job's
    folder; so for the length of the job sys.argv becomes this job's own overrides and
    hydra.run.dir its folder. Launchers that run jobs in worker processes (joblib, submitit local)
    cannot re-run a command line at all: DDP jobs there are refused with a clear error.
    """
    from hydra.types import RunMode
    from omegaconf import read_write

    from recipe_runner.errors import RecipeError

    if hc.mode != RunMode.MULTIRUN:
        return
    launcher = launcher_name(hc)
    if launcher not in ("BasicLauncher", "SlurmLauncher"):
        raise RecipeError(f"train.strategy={strategy}: the {launcher} runs jobs in worker processes, "
                          f"where Lightning cannot start the other ranks; sweep {strategy} jobs with the default launcher "
                          "(one job after another, each on every device) or hydra/launcher=slurm")
    flags = [a for a in sys.argv[1:] if a not in ("-m", "--multirun") and ("=" not in a or a.startswith("-"))]
    sys.argv = [sys.argv[0], *flags, *hc.overrides.task]
    with read_write(hc.run):
        hc.run.dir = str(run_dir)
