"""diffusers and peft are the optional `diffusion` extra: importing metaopt (the diffusion code included)
loads neither; only building a diffusion task or adapters does."""

import configparser
import subprocess
import sys

from tests.conftest import REPO


def test_importing_metaopt_loads_neither_diffusers_nor_peft():
    code = ("import sys\nimport metaopt, metaopt.tasks, metaopt.diffusion, metaopt.outer.pairing\n"
            "print([m for m in ('diffusers', 'peft') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_diffusion_extra_is_declared_and_installed_by_make():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    extra = setup["options.extras_require"]["diffusion"]
    assert "diffusers" in extra and "peft" in extra
    assert "diffusion" in (REPO / "Makefile").read_text().split(".[", 1)[1].split("]", 1)[0].split(",")
