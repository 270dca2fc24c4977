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
