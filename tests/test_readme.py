"""README.md's Python examples run: the 30-second tour and the methods' snippets, so the README cannot rot.

Snippets that continue a user's code (``x``, ``model``, ``loader``, ``task``) run after a prelude defining
those names; loops run at most a few iterations (the API is what rots, not the iteration counts); snippets
that need data folders are skipped.
"""

import re

import pytest
from hydra.utils import instantiate

from tests.conftest import REPO

SECTIONS = ("A 30-second tour", "The methods")
MAX_ITERATIONS = 3

PRELUDE = """
import functools, itertools, math
import torch
from metaopt.optim import APO, ComplexAdam, ComplexMomentum   # the names a snippet's text introduces
torch.manual_seed(0)
x, y = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)                 # two players of a game
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
loss_fn = torch.nn.functional.cross_entropy
batches = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(4)]
loader = fresh_loader = batches                                      # a training loader, and a second one
fresh = itertools.cycle(batches)
"""


def _blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    blocks = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        if title in SECTIONS:
            for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)):
                blocks.append((f"{title} #{i + 1}", code))
    return blocks


def _shortened(code: str) -> str:
    return re.sub(r"^(\s*for .+ in )range\((.+)\):", rf"\1range(min(\2, {MAX_ITERATIONS})):", code, flags=re.M)


BLOCKS = _blocks()

# Examples known to be broken, keyed by a line of the example (strict xfail: a fixed README fails the
# test until its entry goes). Empty: every example runs.
KNOWN_BROKEN: dict[str, str] = {}


def test_the_readme_has_the_examples_this_test_runs():
    assert [name for name, _ in BLOCKS if name.startswith(SECTIONS[0])], "the tour lost its Python example"
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_example_runs(name, code, make_config, one_thread, request):
    if "data_root" in code or "/data/" in code:
        pytest.skip("needs a data folder")
    for snippet, reason in KNOWN_BROKEN.items():
        if snippet in code:
            request.applymarker(pytest.mark.xfail(reason=f"README: {reason}", strict=True))
    namespace: dict = {}
    exec(PRELUDE, namespace)
    if re.search(r"\btask\b", code):
        namespace["task"] = instantiate(make_config("task=digits_mlp").task)
    exec(compile(_shortened(code), f"README.md: {name}", "exec"), namespace)
