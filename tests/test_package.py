"""metaopt as a user installs it: a wheel that carries its configs, a `metaopt` command that works from any
folder (with shell completion), and a core that does not need the runner's dependencies."""

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO

RUNNER_ONLY = ("hydra", "omegaconf", "wandb", "matplotlib", "sklearn")


def test_importing_the_optimizers_loads_none_of_the_runner_dependencies():
    code = ("import sys\nimport metaopt.optim, metaopt.tasks, metaopt.unrolled, metaopt.bilevel, metaopt.games\n"
            f"print([m for m in {RUNNER_ONLY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_loop_imports_only_its_own_module():
    # A run's startup pays for its own loop: `_target_: metaopt.outer.TrainingLoop` (every plain run) must not
    # import the games, bilevel, diffusion or ES loops and machinery; every loop is still reachable as metaopt.outer.X.
    others = ("metaopt.outer.grr", "metaopt.outer.game", "metaopt.outer.bilevel", "metaopt.outer.draft",
              "metaopt.outer.ddpo", "metaopt.outer.diffusion_es", "metaopt.outer.unrolled", "metaopt.outer.apo",
              "metaopt.games", "metaopt.bilevel")
    code = ("import sys\nimport metaopt.outer as outer\nloop = outer.TrainingLoop\n"
            f"print([m for m in {others!r} if m in sys.modules])\n"
            "print(all(getattr(outer, name) is not None for name in outer.__all__))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True"]


def test_a_plain_install_requires_torch_and_numpy_only():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    requires = [r.split(">")[0].split("=")[0].split("<")[0].strip()
                for r in setup["options"]["install_requires"].split("\n") if r.strip()]
    assert requires == ["torch", "numpy"]
    runner = setup["options.extras_require"]["runner"]
    for package in ("hydra-core", "omegaconf", "wandb", "tqdm", "matplotlib", "scikit-learn"):
        assert package in runner


def _venv_with_the_wheel(tmp_path: Path) -> Path:
    """A fresh venv holding the wheel built from this checkout; the dependencies come from the running
    interpreter's site-packages through a .pth file (the editable metaopt there is not on that path)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "metaopt", source / "metaopt", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("metaopt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return venv


def test_the_wheel_runs_from_any_folder_with_its_configs_and_shell_completion(tmp_path):
    venv = _venv_with_the_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["WANDB_MODE"] = "disabled"
    metaopt = str(venv / "bin" / "metaopt")

    def sh(*args, **extra_env):
        return subprocess.run(args, cwd=elsewhere, env={**env, **extra_env}, capture_output=True, text=True,
                              timeout=180)

    where = sh(str(venv / "bin" / "python"), "-c", "import metaopt; print(metaopt.__file__)")
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr  # the wheel, not the checkout

    help_ = sh(metaopt, "--help")
    assert help_.returncode == 0, help_.stderr
    assert re.search(r"^optimizer: .*\badam\b", help_.stdout, re.M)  # the configs shipped in the wheel
    assert re.search(r"^task: .*\bdigits_mlp\b", help_.stdout, re.M)

    run = sh(metaopt, "outer.steps=3", "logger=none", "progress=false")
    assert run.returncode == 0, run.stderr
    (summary,) = (elsewhere / "outputs").glob("*/*/summary.json")
    assert '"steps": 3' in summary.read_text()

    install = sh(metaopt, "--shell-completion", "install=bash")
    assert install.returncode == 0
    assert "complete -o nospace -o default -F hydra_bash_completion metaopt" in install.stdout
    line = "metaopt opt"
    query = sh(metaopt, "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line)))
    assert query.stdout.split() == ["optimizer.", "optimizer="], query.stdout + query.stderr
    line = "metaopt optimizer=s"
    query = sh(metaopt, "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line)))
    assert set(query.stdout.split()) == {"optimizer=sgd", "optimizer=sgd_momentum"}
