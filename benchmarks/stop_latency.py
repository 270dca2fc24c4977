"""Stop latency through the API: from a stop request to the search returning its best so far.

EvoSearch with a first generation of ``--population`` samples (the bundled shapes model,
25 steps) is started; after ``--after`` seconds a ``stop`` callable starts returning True. The
latency is the time from that moment to the call returning (with ``out.complete`` False; in
the middle of the first generation no sample is finished yet, so there is no best). The stop check runs once per micro-batch, so the latency is about one
micro-batch's denoiser call; it is reported per ``--max-batch-size``.

    python benchmarks/stop_latency.py [--population 5000] [--max-batch-size 8 64] [--repeats 3]

Writes ``{"rows": [{"max_batch_size", "latency_s": [...], "median_s", "nfe_at_stop"}], "settings"}``
to ``--out`` (default benchmarks/results/stop_latency.json) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch import EvoSearch, SearchPipeline  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.registry import MODELS  # noqa: E402


class StopAfter:
    """A ``stop`` callable that turns True ``seconds`` after :meth:`start` (a timer thread sets it,
    as Ctrl-C or a Cancel button would, independently of when the search checks)."""

    def __init__(self, seconds: float):
        self.seconds, self.requested = seconds, None
        self._event = threading.Event()

    def start(self) -> None:
        def fire():
            self.requested = time.perf_counter()
            self._event.set()

        threading.Timer(self.seconds, fire).start()

    def __call__(self) -> bool:
        return self._event.is_set()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--population", type=int, default=5000, help="EvoSearch's first generation (default: 5000)")
    ap.add_argument("--max-batch-size", type=int, nargs="+", default=[8, 64], help="micro-batch sizes (default: 8 64)")
    ap.add_argument("--after", type=float, default=3.0, help="seconds before the stop request (default: 3)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per micro-batch size (default: 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stop_latency.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = shapes.load_pipeline()
    steps = pipe.default_num_inference_steps
    method = EvoSearch(evolution_schedule=[0, 10], population_schedule=[args.population, 16, 16])
    rows = []
    print(f"{'micro-batch':>11s} {'median s':>9s} {'runs (s)':24s} {'NFE at stop':>11s}")
    for mbs in args.max_batch_size:
        search = SearchPipeline.from_pipe(pipe, reward=shapes.load_reward(), method=method, max_batch_size=mbs,
                                          judge=False)
        latencies, nfes = [], []
        for r in range(args.repeats):
            stop = StopAfter(args.after)
            stop.start()
            out = search(MODELS["shapes"].default_prompt, seed=r, num_inference_steps=steps, stop=stop, progress=False)
            latencies.append(time.perf_counter() - stop.requested)
            nfes.append(out.stats.nfe)
            assert not out.complete  # stopped mid-generation 0: nothing was scored yet, so no best
        row = {"max_batch_size": mbs, "latency_s": [round(x, 3) for x in latencies],
               "median_s": round(statistics.median(latencies), 3), "nfe_at_stop": nfes}
        rows.append(row)
        print(f"{mbs:11d} {row['median_s']:9.3f} {str(row['latency_s']):24s} {str(nfes):>11s}", flush=True)
    settings = {"population": args.population, "steps": steps, "after_s": args.after, "threads": args.threads,
                "model": "bundled shapes (diffusion)", "planned_nfe": method.plan(10**7, steps).nfe}
    atomic_write_json(args.out, {"rows": rows, "settings": settings})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
