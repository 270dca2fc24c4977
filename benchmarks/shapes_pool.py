"""Candidate pools of the shapes world: plain samples with their x0 previews, kept for re-scoring.

For each (prompt, seed) it draws ``--n`` candidates exactly as ``BestOfN(n)`` does (the same
lineages, the same step noise) and keeps, as 8-bit images, each candidate's final sample and the
decoded x0 preview at every step of ``--preview-steps``. Nothing here needs a reward or a judge,
so a pool can be re-scored by any reward and re-judged by any judge later, for free:

- best-of-K for every K <= n is the best of the first K candidates (BestOfN draws seeds in order);
- the plain accuracy, the oracle (the judge picks among the n), the reward's AUC for correct vs
  wrong samples of one prompt, and the preview's predictive power at each step;
- choosing the hard suite by plain accuracy on *selection* seeds (``shapes_suites.py``).

    python benchmarks/shapes_pool.py --prompts-file P.txt --seeds 7000 --n 12 --out /tmp/pool_select

Writes one ``.npz`` per (prompt, seed) under ``--out`` (``final`` (n, 32, 32, 3) uint8, ``preview_<i>``
likewise, ``seeds`` the candidates' lineage seeds), atomically, and skips pairs already there
(a cut run resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch import SearchPipeline  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.core.records import Plan  # noqa: E402
from evosearch.io import atomic_path  # noqa: E402
from evosearch.search.context import as_stored  # noqa: E402
from evosearch.search.method import SearchMethod  # noqa: E402


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return as_stored(x).permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class PoolCollector(SearchMethod):
    """Best-of-n that also keeps every candidate's decoded x0 preview at ``preview_steps``
    (benchmark instrumentation: the same candidates as ``BestOfN(n)``, no extra NFE)."""

    n: int = 16
    preview_steps: tuple = (4, 6, 8, 10, 12)
    skip: int = 0  # draw the lineages of BestOfN(skip + n) and keep the last n (to extend a pool)
    sink: dict = field(default_factory=dict, compare=False, hash=False)

    name = "pool"
    requires = frozenset({"predict"})

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        return Plan(self.name, self.n * num_steps, self.n, {"n": self.n})

    def run(self, run) -> None:
        lineages = run.new_lineages(self.skip + self.n)[self.skip:]
        wave = run.max_batch_size
        finals, previews = [], {s: [] for s in self.preview_steps}
        for lo in range(0, self.n, wave):
            pop = run.start(lineages[lo: lo + wave])
            for i in range(run.num_steps):
                pred = run.predict(pop)
                if i in previews:
                    previews[i].append(to_uint8(run.stepper.finish(pred.x0_hat)))
                pop = run.advance(pop, pred)
            images = run.stepper.finish(pop.states)
            finals.append(to_uint8(images))
            run.record(images, pop.lineages, 0, 0)
        self.sink["final"] = np.concatenate(finals)
        self.sink.update({f"preview_{s}": np.concatenate(v) for s, v in previews.items()})
        self.sink["seeds"] = np.asarray([lin.seed for lin in lineages], dtype=np.int64)


def pool_path(folder: Path, prompt: str, seed: int) -> Path:
    key = hashlib.sha1(f"{shapes.grammar.normalize_prompt(prompt)}|{seed}".encode()).hexdigest()[:16]
    return folder / f"{key}.npz"


def load_pool(folder: Path, prompt: str, seed: int, extensions: tuple = ()) -> dict | None:
    """The pool of (prompt, seed) in ``folder``, with the candidates of any ``extensions`` folders
    (pools made with ``--skip`` = this pool's size) appended; None when there is none."""
    path = pool_path(folder, prompt, seed)
    if not path.is_file():
        return None
    with np.load(path) as data:
        pool = {k: data[k] for k in data.files}
    for ext in extensions:
        more = load_pool(Path(ext), prompt, seed)
        if more is not None:
            for k in pool:
                if k == "final" or k.startswith("preview_") or k == "seeds":
                    pool[k] = np.concatenate([pool[k], more[k]])
            pool["seconds"] = pool.get("seconds", 0) + more.get("seconds", 0)
    return pool


def collect(search, prompts: list[str], seeds: list[int], n: int, preview_steps, folder: Path, steps: int,
            skip: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(p, s) for p in prompts for s in seeds if not pool_path(folder, p, s).is_file()]
    t0 = time.time()
    for k, (prompt, seed) in enumerate(todo):
        method = PoolCollector(n=n, preview_steps=tuple(preview_steps), skip=skip)
        t = time.time()
        search(prompt, seed=seed, num_inference_steps=steps, method=method, output_type="pt", progress=False)
        seconds = time.time() - t
        with atomic_path(pool_path(folder, prompt, seed)) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, prompt=np.asarray(prompt), seed=np.asarray(seed), seconds=np.asarray(seconds),
                                    threads=np.asarray(torch.get_num_threads()), **method.sink)
        done = k + 1
        rate = (time.time() - t0) / done
        print(f"[{done}/{len(todo)}] {prompt!r} seed {seed}  ({rate:.1f} s each, {rate * (len(todo) - done) / 60:.0f} "
              f"min left)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts-file", type=Path, required=True, help="one prompt per line")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="base seeds (one pool per prompt and seed)")
    ap.add_argument("--n", type=int, default=64, help="candidates per pool (default: 64)")
    ap.add_argument("--preview-steps", type=int, nargs="*", default=[4, 6, 8, 10, 12])
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip", type=int, default=0, help="candidates to skip: extends a pool of --skip candidates "
                    "(write to another folder; load_pool(..., extensions=[folder]) appends it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prompts = [p.strip() for p in args.prompts_file.read_text().splitlines() if p.strip()]
    pipe = shapes.load_pipeline()
    # the reward is not what the pool is for (re-scored later); the bundled one is cheap
    search = SearchPipeline.from_pipe(pipe, reward=shapes.load_reward(version="v1"), max_batch_size=args.max_batch_size,
                                      judge=False)
    collect(search, prompts, args.seeds, args.n, args.preview_steps, args.out, pipe.default_num_inference_steps,
            args.skip)


if __name__ == "__main__":
    main()
