"""Two gloo processes on the CPU, as a user launches them:
``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``, running ``support/commands.py``."""

import os
import subprocess
import sys
from pathlib import Path

SUPPORT = Path(__file__).parent


def launch_two(
    project: Path, writes: Path, *commands: list[str], port: int = 29617
) -> subprocess.CompletedProcess:
    """Run ``commands`` (medalist argument lists, or ``["cd", folder]``) in turn in one launch of
    two processes, from ``project``; every file each process writes is logged to ``writes``."""
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        # commands.py as a module; tricks.custom hooks as support.<module>:<Hook>, as in-process
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(SUPPORT.parent)]),
    }
    argv = [str(writes)]
    for command in commands:
        argv += [*command, ":::"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "commands",
        *argv[:-1],
    ]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
