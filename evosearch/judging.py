"""A held-out judge in every output: its verdict on the best sample, on plain samples and on the
final population, and a warning when the reward rose while the judge says the sample got worse.

A judge is a callable ``(images, prompts) -> list of dicts`` with at least ``"correct"`` and
``"valid"`` (bools) per image — the bundled worlds' exact judges — or a Reward the search
does not optimise, whose score becomes the verdict ``{"score": float}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .core.validation import ParameterError, describe
from .rewards.base import Reward

#: the population verdicts kept in an output (the best first)
POPULATION_JUDGED = 16


class RewardJudge:
    """A Reward used as a judge: the verdict is its score."""

    def __init__(self, reward: Reward):
        self.reward = reward

    def __call__(self, images, prompts) -> list[dict]:
        return [{"score": float(s)} for s in self.reward(images, prompts)]

    def __repr__(self) -> str:
        return f"RewardJudge({self.reward!r})"


def as_judge(judge, pipe=None):
    """A judge callable, or None. ``None``: the pipeline's own (``pipe.default_judge()``, bundled
    worlds), if any; ``False``: no judge."""
    if judge is False:
        return None
    if judge is None:
        factory = getattr(pipe, "default_judge", None)
        return factory() if callable(factory) else None
    if isinstance(judge, Reward):
        return RewardJudge(judge)
    if callable(judge):
        return judge
    raise ParameterError(f"judge: expected a callable (images, prompts) -> [{{'correct', 'valid', ...}}], a Reward, "
                         f"None (the model's own) or False, got {describe(judge)}")


def verdict_value(verdict: dict) -> float:
    """The number a verdict stands for: 1/0 for correct, else its score."""
    if "correct" in verdict:
        return float(bool(verdict["correct"]))
    return float(verdict.get("score", np.nan))


def summarize(verdicts: list[dict]) -> dict:
    """Accuracy and validity (or mean score) over verdicts."""
    out = {"n": len(verdicts)}
    if verdicts and "correct" in verdicts[0]:
        out["correct"] = float(np.mean([bool(v["correct"]) for v in verdicts]))
        out["valid"] = float(np.mean([bool(v.get("valid", True)) for v in verdicts]))
    elif verdicts:
        out["score"] = float(np.mean([verdict_value(v) for v in verdicts]))
    return out


def _as_float(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images).float() / 255.0


@dataclass
class JudgeReport:
    verdicts: dict | None = None
    warnings: list[str] = field(default_factory=list)


def _short(verdict: dict) -> dict:
    return {k: v for k, v in verdict.items() if k in ("correct", "valid", "category", "reason", "score")}


def hacking_suspected(best_reward: float, best_value: float, plain_rewards, plain_values) -> bool:
    """The reward-hacking rule: the winner's reward is above the plain samples' mean reward while
    the judge rates it below their mean verdict (``verdict_value``: 1/0 for correct/wrong)."""
    return bool(len(plain_values) and best_reward > float(np.mean(plain_rewards))
                and best_value < float(np.mean(plain_values)))


def judge_output(judge, run, ranked) -> JudgeReport:
    """The judge's report on a finished search (``run``: its context, ``ranked``: its final population)."""
    if judge is None or run.best is None:
        return JudgeReport()
    try:
        best = judge(_as_float([run.best.image]), run.prompt)[0]
        plain = judge(_as_float([c.image for c in run.plain]), run.prompt) if run.plain else []
        population = judge(_as_float([c.image for c in ranked[:POPULATION_JUDGED]]), run.prompt)
    except Exception as err:  # a broken judge must not lose the search's result
        return JudgeReport(None, [f"judge failed: {type(err).__name__}: {err}"])
    verdicts = {"best": _short(best), "plain": {**summarize(plain), "source": run.plain_source,
                                                "verdicts": [_short(v) for v in plain]},
                "population": summarize(population)}
    warnings = []
    if plain:
        plain_reward = float(np.mean([c.reward for c in run.plain]))
        plain_value = float(np.mean([verdict_value(v) for v in plain]))
        if hacking_suspected(run.best.reward, verdict_value(best), [c.reward for c in run.plain],
                             [verdict_value(v) for v in plain]):
            what = (f"calls the best sample {'correct' if best.get('correct') else 'incorrect'} while "
                    f"{plain_value:.0%} of plain samples are correct" if "correct" in best else
                    f"scores the best {verdict_value(best):.4g} against {plain_value:.4g} for plain samples")
            warnings.append(f"reward hacking suspected: the reward rose from {plain_reward:.4g} (plain samples) to "
                            f"{run.best.reward:.4g}, but the judge {what}")
    return JudgeReport(verdicts, warnings)
