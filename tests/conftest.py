import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "metaopt" / "conf"


@pytest.fixture
def make_config():
    """Compose the runner's config in-process (no output folder, no Hydra job)."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=["name=test", "logger=none", "progress=false", *overrides])

    return _compose


@pytest.fixture
def one_thread():
    """Run a test with one torch thread, restoring the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    """The environment of a CLI subprocess: offline wandb, and its own wandb service. (A test that used
    wandb in this process set WANDB_SERVICE, which would make every subprocess share this process's
    service: a run killed with SIGKILL would leave its run open there, and its resume would be refused
    with "run ID … is in use".)"""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_MODE": "offline"}


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m metaopt.run ARGS`` in a subprocess, as a user would type it."""
    full_env = {**subprocess_env(), "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "metaopt.run", *args], cwd=kwargs.pop("cwd", REPO),
                          capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs)


@pytest.fixture(scope="session")
def diffusion_cache(tmp_path_factory):
    """A session-wide ``$METAOPT_CACHE`` in a tmp folder: the tiny digits DDPMs and classifiers the diffusion
    tests pretrain are cached there (once per config), never in the user's cache."""
    path = tmp_path_factory.mktemp("metaopt_cache")
    previous = os.environ.get("METAOPT_CACHE")
    os.environ["METAOPT_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("METAOPT_CACHE", None)
    else:
        os.environ["METAOPT_CACHE"] = previous
