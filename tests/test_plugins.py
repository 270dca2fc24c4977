"""One file per extension: a method or reward declares its registry name, summary and population
parameter itself; the registry's tables derive from the classes; third-party packages register through
the ``evosearch.methods`` / ``evosearch.rewards`` entry points or ``registry.register_method``."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from evosearch import registry
from evosearch.core.validation import ParameterError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PLUGINS = TESTS / "plugins"
sys.path.insert(0, str(PLUGINS))

from toy_method import HillClimb  # noqa: E402
from toy_reward import Brightness  # noqa: E402


def write_plugin_dist(folder: Path, entry_points: str, name: str = "evosearch_toy_plugin") -> Path:
    """A minimal installed distribution (a .dist-info with entry_points.txt), as pip would leave it."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


def test_tables_derive_from_the_classes():
    for cls in registry.BUILTIN_METHODS:
        assert registry.METHODS[cls.name] is cls
        assert registry.POPULATION_PARAMETER[cls.name] == cls.population_parameter
        assert registry.METHOD_SUMMARIES[cls.name] == cls.summary and cls.summary
    for cls in registry.BUILTIN_REWARDS:
        entry = registry.REWARDS[cls.registry_name]
        assert (entry.summary, entry.needs_weights, entry.video) == (cls.summary, cls.needs_weights, cls.video_input)
    assert list(registry.METHODS)[0] == "evosearch"  # the CLI's default comes first


def test_register_method_makes_it_buildable(restored_registry):
    assert registry.register_method(HillClimb) is HillClimb
    assert registry.register_method(HillClimb) is HillClimb  # again: nothing changes
    method = registry.build_method("toy", population=3, rate=0.5)
    assert method == HillClimb(n=3, rate=0.5)
    assert registry.METHOD_SUMMARIES["toy"] == HillClimb.summary
    assert registry.method_unavailable("toy", "shapes") is None  # capabilities decide at run time
    plan = method.plan(300, 25)
    assert (plan.nfe, plan["rounds"], registry.largest_population(plan)) == (300, 3, 3)
    with pytest.raises(ParameterError, match="steps: not an option of toy"):
        registry.build_method("toy", steps=3)


def test_register_method_refuses_what_it_cannot_list(restored_registry):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Nameless(HillClimb):
        name = "method"

    @dataclass(frozen=True)
    class Impostor(HillClimb):
        name = "best-of-n"

    @dataclass(frozen=True)
    class BadPopulation(HillClimb):
        name = "bad-population"
        population_parameter = "size"

    with pytest.raises(ParameterError, match="needs a class attribute name"):
        registry.register_method(Nameless)
    with pytest.raises(ParameterError, match="'best-of-n' of .*Impostor is taken by evosearch.search.best_of_n.BestOfN"):
        registry.register_method(Impostor)
    with pytest.raises(ParameterError, match="population_parameter is 'size', not one of its fields .*n, rounds"):
        registry.register_method(BadPopulation)
    with pytest.raises(ParameterError, match="method: expected a SearchMethod dataclass"):
        registry.register_method(Brightness)
    assert "best-of-n" in registry.METHODS and registry.METHODS["best-of-n"].__name__ == "BestOfN"


def test_toy_method_and_reward_search_the_shapes_world(restored_registry):
    from evosearch import SearchPipeline
    from evosearch.bundled import shapes

    registry.register_method(HillClimb)
    registry.register_reward(Brightness)
    assert registry.reward_unavailable("toy-brightness", "shapes") is None
    search = SearchPipeline.from_pipe(shapes.load_pipeline(), reward=registry.load_reward("toy-brightness"),
                                      method=registry.build_method("toy", population=2), judge=None)
    out = search("a red circle", seed=0, num_inference_steps=4, nfe_budget=24)
    assert out.stats.nfe == 24  # n=2, 1 + 2 rounds, 4 steps
    first = [h for h in out.history if h["generation"] == 0]
    assert out.best.reward >= max(max(h["rewards"]) for h in first)
    replayed = search.replay(out.best.lineage)  # a toy method's winner replays like any other (an 8-bit image)
    assert abs(float(Brightness()([replayed])[0]) - out.best.reward) < 1 / 255


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, restored_registry):
    write_plugin_dist(tmp_path, "[evosearch.methods]\nbroken = no_such_module_xyz:Thing\n"
                                "[evosearch.rewards]\ntoy-brightness = toy_reward:Brightness\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = registry.load_plugins()
    assert "evosearch.rewards:toy-brightness" in done and "toy-brightness" in registry.REWARDS
    assert any("evosearch.methods:broken = no_such_module_xyz:Thing was not registered" in str(w.message)
               for w in caught)


def test_cli_runs_a_method_and_reward_from_an_entry_point(tmp_path):
    """A plugin installed as a distribution (its entry points on sys.path) is offered by the CLI with no
    change to evosearch: ``evosearch generate --method toy --reward toy-brightness``."""
    site = write_plugin_dist(tmp_path / "site", "[evosearch.methods]\ntoy = toy_method:HillClimb\n"
                                                "[evosearch.rewards]\ntoy-brightness = toy_reward:Brightness\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(PLUGINS), str(ROOT)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "evosearch.cli", "generate", "--method", "toy", "--reward", "toy-brightness",
           "--population", "2", "--nfe-budget", "24", "--steps", "4", "--prompt", "a red circle", "--quiet",
           "--out", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["settings"]["method"]["method"] == "toy", record["settings"]
    assert record["stats"]["nfe"] == 24
    assert (out / "best.png").is_file()
