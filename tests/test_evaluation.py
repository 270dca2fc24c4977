"""The benchmark's statistics: cluster bootstrap intervals and pairing by (prompt, seed)."""

import numpy as np
import pytest

from evosearch.evaluation import cluster_bootstrap, pair, paired_difference, roc_auc


def test_cluster_bootstrap_covers_the_truth_and_widens_with_clustered_data():
    rng = np.random.default_rng(0)
    covered, widths_clustered, widths_flat = 0, [], []
    for trial in range(60):
        # 24 prompts, 4 seeds each; a prompt effect shared by its seeds (clustered data)
        effect = rng.normal(0, 0.3, size=24)
        values = np.concatenate([e + rng.normal(0, 0.1, size=4) for e in effect])
        prompts = np.repeat(np.arange(24), 4)
        ci = cluster_bootstrap(values, prompts, n_boot=1000, seed=trial)
        covered += ci.low <= 0.0 <= ci.high
        widths_clustered.append(ci.high - ci.low)
        widths_flat.append(np.subtract(*reversed(
            [*(lambda c: (c.low, c.high))(cluster_bootstrap(values, np.arange(96), n_boot=1000, seed=trial))])))
    assert covered >= 52  # about 95% of 60
    assert np.mean(widths_clustered) > 1.5 * np.mean(widths_flat)  # seeds of one prompt are not independent


def test_cluster_bootstrap_is_deterministic_and_checks_lengths():
    a = cluster_bootstrap([1, 0, 1, 1], ["p", "p", "q", "q"], seed=3)
    assert a == cluster_bootstrap([1, 0, 1, 1], ["p", "p", "q", "q"], seed=3)
    assert a.mean == 0.75 and a.n == 4 and a.clusters == 2
    with pytest.raises(ValueError, match="values, clusters"):
        cluster_bootstrap([1, 0], ["p"])


def test_paired_difference_pairs_only_shared_prompt_seeds():
    recs = [
        {"method": "a", "K": 4, "prompt": "x", "seed": 1, "judge": True},
        {"method": "b", "K": 4, "prompt": "x", "seed": 1, "judge": False},
        {"method": "a", "K": 4, "prompt": "y", "seed": 1, "judge": True},
        {"method": "b", "K": 4, "prompt": "y", "seed": 1, "judge": True},
        {"method": "a", "K": 4, "prompt": "z", "seed": 2, "judge": True},  # no partner
        {"method": "b", "K": 8, "prompt": "z", "seed": 2, "judge": False},  # other K
    ]
    diffs, prompts = pair(recs, "a", "b", 4)
    assert sorted(diffs) == [0.0, 1.0] and sorted(prompts) == ["x", "y"]
    d = paired_difference(recs, "a", "b", 4)
    assert d.mean == 0.5 and d.n == 2 and not d.excludes_zero() or d.low > 0


def test_roc_auc():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert np.isnan(roc_auc([1, 2], [True, True]))


def _geneval():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "shapes_geneval.py"
    spec = importlib.util.spec_from_file_location("shapes_geneval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(cells):
    """Benchmark records from {(method, K): [judge per (prompt, seed) of p0/p1/p2 x seeds 0/1]}."""
    keys = [(p, s) for p in ("p0", "p1", "p2") for s in (0, 1)]
    return [{"suite": "hard", "split": "test", "reward_model": "r", "method": m, "K": k, "prompt": p, "seed": s,
             "category": "position", "nfe": 25 * k, "reward": 80.0, "judge": v, "valid": True, "seconds": 1.0,
             "image": f"{m}{k}{p}{s}"} for (m, k), verdicts in cells.items() for (p, s), v in zip(keys, verdicts)]


def test_report_pairs_across_budgets_and_writes_each_methods_rows_once(tmp_path):
    g = _geneval()
    records = _records({("best-of-n", 8): [0, 0, 1, 0, 1, 1], ("best-of-n", 16): [1, 0, 1, 1, 1, 1],
                        ("best-of-n", 64): [1, 1, 1, 1, 1, 1], ("evosearch", 8): [1, 0, 1, 1, 1, 1],
                        ("evosearch", 64): [1, 1, 0, 1, 1, 1]})
    records = [r for r in records if (r["method"], r["K"], r["seed"]) != ("best-of-n", 64, 1)]  # K=64 on seed 0 only
    falls = {r["method"]: r for r in g.collapse(records, 8, 64)}
    # paired on the 3 (prompt, seed 0) pairs: K=8 there is 0, 1, 1 (not the mean over both seeds)
    assert falls["best-of-n"]["judge_K8"] == pytest.approx(2 / 3) and falls["best-of-n"]["pairs"] == 3
    assert falls["best-of-n"]["change"] == pytest.approx(1 / 3)
    assert falls["evosearch"]["change"] == pytest.approx(0.0) and falls["evosearch"]["pairs"] == 6
    (twice,) = g.efficiency(records, 2)  # evosearch at 8 against best-of-n at 16: the same verdicts
    assert (twice["K"], twice["bon_K"], twice["diff"], twice["prompts"]) == (8, 16, 0.0, 3)

    (tmp_path / "evosearch.md").write_text("<!-- kept -->\n")
    rows = g.summarize(records)
    g.write_snippets(rows, tmp_path)
    first = (tmp_path / "evosearch.md").read_text()
    assert first.startswith("<!-- kept -->\n<!-- --8<-- [start:hard-r] -->\n| evosearch | ")
    # the docs' columns K = 4 ... 128; +1/3 over 3 prompts holds 0 in its interval: no ▲
    assert "| evosearch − best-of-n | – | +0.333 [+0.00, +0.50] | – | – | -0.333 [-1.00, +0.00] | – |\n" in first
    g.write_snippets(rows, tmp_path)  # a second report replaces the block, it does not append another
    assert (tmp_path / "evosearch.md").read_text() == first
    assert (tmp_path / "best-of-n.md").read_text().count("[start:hard-r]") == 1


def test_report_measures_how_far_apart_winners_are_across_seeds(tmp_path):
    """``report --pools``: winners are found by their image hash among the pools' candidates; a
    method whose winner is the same picture on every seed has spread 0, against best-of-N's."""
    g = _geneval()
    from shapes_pool import pool_path

    dark, light, mid = (np.full((32, 32, 3), v, np.uint8) for v in (0, 255, 128))
    records = []
    for p in ("p0", "p1"):
        for s, bon in ((0, dark), (1, light)):
            path = pool_path(tmp_path, p, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, prompt=np.asarray(p), seed=np.asarray(s), final=np.stack([bon, mid]))
            base = {"suite": "hard", "split": "test", "reward_model": "r", "prompt": p, "seed": s, "K": 4}
            records += [{**base, "method": "best-of-n", "image": g.image_hash(bon)},
                        {**base, "method": "evosearch", "image": g.image_hash(mid)},
                        {**base, "method": "particles", "image": "not-in-any-pool"}]
    rows = {r["method"]: r for r in g.diversity(records, [tmp_path])}
    assert set(rows) == {"best-of-n", "evosearch"}  # particles' winners are not pool candidates: left out
    assert rows["best-of-n"]["spread"] == pytest.approx(1.0) and rows["best-of-n"]["seeds"] == 2
    assert rows["evosearch"]["spread"] == 0.0 and rows["evosearch"]["ratio_vs_bon"] == 0.0
    assert rows["evosearch"]["diff_vs_bon"] == pytest.approx(-1.0) and rows["evosearch"]["paired_prompts"] == 2
