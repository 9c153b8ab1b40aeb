"""The contract every registered strategy keeps, checked for each one in ``keypatch.available()``.

A strategy added to the registry (one file plus one import line) is collected here without editing
this file: ``test_a_new_strategy_is_covered_without_editing_a_test`` shows it with a throw-away one.
"""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import keypatch
from keypatch.proposers import available, get_proposer
from tests.conftest import smooth_images

RATIO = 0.5  # 8 of the toy grid's 16 patches


def _images(n: int) -> torch.Tensor:
    return smooth_images(n, 64, seed=11)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _images(3)


@pytest.fixture(scope="module")
def answers(toy_model, images):
    """Each strategy's batched answer, computed once per strategy."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = keypatch.propose_batch(images, RATIO, name, toy_model, seed=5)
        return cache[name]

    return get


@pytest.mark.parametrize("name", available())
def test_k_distinct_patches_in_range(name, answers, toy_model):
    k = toy_model.grid.count(RATIO)
    for p in answers(name):
        assert p.strategy == name and p.k == k and len(set(p.patches)) == k
        assert all(isinstance(i, int) and 0 <= i < toy_model.grid.n for i in p.patches)
        assert len(p.losses) == k and not any(math.isnan(v) for v in p.losses)
        assert p.evaluations >= 0 and (p.evaluations > 0) == get_proposer(name).searches_objective


@pytest.mark.parametrize("name", available())
def test_deterministic_under_a_seed(name, answers, toy_model, images):
    again = keypatch.propose_batch(images, RATIO, name, toy_model, seed=5)
    assert [p.patches for p in again] == [p.patches for p in answers(name)]
    assert [p.losses for p in again] == [p.losses for p in answers(name)]


@pytest.mark.parametrize("name", available())
def test_batch_equals_one_by_one(name, answers, toy_model, images):
    for i, p in enumerate(answers(name)):
        one = keypatch.propose_batch(images[i : i + 1], RATIO, name, toy_model, seed=5)[0]
        assert one.patches == p.patches
        assert one.losses == pytest.approx(p.losses, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", available())
def test_reported_losses_are_reconstruction_losses(name, answers, toy_model, images):
    for i, p in enumerate(answers(name)):
        want = [keypatch.reconstruction_loss(images[i], p.patches[: j + 1], model=toy_model) for j in range(p.k)]
        assert p.losses == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", available())
def test_prefix_consistency_as_declared(name, answers, toy_model, images):
    if not get_proposer(name).prefix_consistent:
        pytest.skip(f"{name} does not declare prefix_consistent")
    short = keypatch.propose_batch(images, 0.25, name, toy_model, seed=5)
    for s, p in zip(short, answers(name), strict=True):
        assert s.patches == p.patches[: s.k]


STRINGS = ("float32", "mixed", "bfloat16", "greedy", "screened", "local", "multi", "pixel-mean", "resize")
"""Text values tried as the alternative of a string option (the first one a strategy accepts)."""


def _alternatives(kind, default, tmp_path: Path):
    """Values other than ``default`` an option of type ``kind`` may take, most plausible first."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    out = []
    if bool in kinds:
        out.append(not default)
    if int in kinds and isinstance(default, int) and not isinstance(default, bool):
        out += [default + 1, default + 2, max(default - 1, 0), 1, 0]
    if float in kinds and isinstance(default, float):
        out += [default / 2, default * 1.5, 0.3]
    if str in kinds:
        ranker = tmp_path / "other_ranker.safetensors"
        if not ranker.exists():
            from keypatch.ranker import PatchRanker, save_ranker

            torch.manual_seed(3)
            save_ranker(PatchRanker(), ranker)
        out += [v for v in STRINGS if v != default] + [str(ranker)]
    return [v for v in out if v != default]


@pytest.mark.parametrize("name", available())
def test_every_option_that_changes_the_picks_is_in_the_stored_identity(name, tmp_path):
    """For each option a strategy declares (but the run options: memory, batching, the start stored
    apart), a strategy built with another value has other settings (the key of a stored record);
    for ``swap``, the options of each base it refines too."""
    from keypatch.proposers.base import _REGISTRY

    cls = _REGISTRY[name]
    base_proposer = get_proposer(name)
    cases = [({}, base_proposer)]
    if name == "swap":
        from keypatch.proposers.swap import BASES

        cases += [({"base": b}, get_proposer(name, base=b)) for b in BASES]
    for fixed, proposer in cases:
        declared = dict(cls.options)
        if cls.options_pass_through:  # swap: its base's options are its own
            declared.update({k: v for k, v in _REGISTRY[proposer.base.name].options.items() if k not in declared})
        for option, kind in sorted(declared.items()):
            if option in cls.run_options or option in fixed or option in ("classifier", "weights"):
                continue  # attention's classifier object and weights file: named in settings as given
            default = getattr(proposer, option, None)
            if default is None and cls.options_pass_through:
                default = getattr(proposer.base, option, None)
            changed = None
            for value in _alternatives(kind, default, tmp_path):
                try:
                    other = get_proposer(name, **fixed, **{option: value})
                except (ValueError, TypeError, OSError):
                    continue
                changed = other.settings() != proposer.settings()
                assert changed, (f"{name} {fixed}: option {option}={value!r} (default {default!r}) leaves the "
                                 f"stored identity unchanged: {other.settings()}")
                break
            assert changed is not None, f"{name} {fixed}: no other value of option {option} ({kind}) was accepted"


THROWAWAY = '''
"""A throw-away strategy: the first k patches of a seeded permutation, scored through the objective."""
import torch
from keypatch.objective import prefix_losses
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer


@register
class FirstOfPermutation(SearchProposer):
    name = "{name}"
    uses_seed = True

    def search(self, objective, k, seeds):
        perms = [torch.randperm(objective.grid.n, generator=torch.Generator().manual_seed(s)) for s in seeds]
        patches = torch.stack(perms)[:, :k].to(objective.device)
        {body}
        return patches, prefix_losses(objective, patches)
'''


def _run_contract_with(tmp_path: Path, name: str, body: str) -> subprocess.CompletedProcess:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(THROWAWAY.format(name=name, body=body)))
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import {name}; import pytest; "
            f"sys.exit(pytest.main([{str(here / 'test_contract.py')!r}, '-q', '-p', 'no:cacheprovider', "
            f"'-k', {name!r} + ' and not new_strategy', '-W', 'ignore']))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=here.parents[1],
                          timeout=600)


def test_a_new_strategy_is_covered_without_editing_a_test(tmp_path):
    good = _run_contract_with(tmp_path, "throwaway_good", "pass")
    assert good.returncode == 0, good.stdout[-2000:]
    assert "6 passed" in good.stdout or "5 passed, 1 skipped" in good.stdout, good.stdout[-2000:]
    # one that breaks the contract (a repeated patch) fails it
    bad = _run_contract_with(tmp_path, "throwaway_bad", "patches[:, 1] = patches[:, 0]")
    assert bad.returncode == 1 and "test_k_distinct_patches_in_range[throwaway_bad]" in bad.stdout, bad.stdout[-2000:]


@pytest.mark.parametrize("name", available())
def test_a_strategy_that_takes_begin_keeps_it_and_one_that_does_not_says_so(name, toy_model, images):
    """Continuing a round: the answer begins with the patches given, distinct, k in all; a strategy
    that cannot continue (``takes_begin`` false) has no step-by-step form for a budget either."""
    proposer = get_proposer(name)
    begin = torch.tensor([[3, 9], [0, 15], [5, 6]])
    if not proposer.takes_begin:
        assert proposer.stepwise() is None
        with pytest.raises(ValueError, match="cannot continue"):
            keypatch.propose_pool(images, 6, name, toy_model)
        return
    patches, losses, _ = proposer.select(toy_model, images, 7, 5, begin=begin)
    assert patches.shape == (3, 7)
    assert torch.equal(patches[:, :2], begin)
    assert all(len(set(row)) == 7 for row in patches.tolist()) and losses.shape == (3, 7)
