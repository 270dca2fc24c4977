"""One search over several processes: wall time, speedup, bytes moved, communication share; and
the world-size invariance of every covered method.

Speed (default): EvoSearch with a 32-wide population on the bundled shapes world, run in 1
process (``distributed=False``) and in 2 processes (gloo on CPU, one torch thread each), each
``--repeats`` times after a warm-up search; the table gives the median wall time of the search
(``out.stats.seconds["total"]``), the speedup, the bytes each rank received per generation, and
the share of wall time in collectives (``comm``: syncs, where waiting for the slowest rank shows,
plus ``data``: moving rewards, samples and states).

    python benchmarks/distributed.py [--worlds 1 2] [--steps 10] [--max-batch-size 16] [--repeats 3]

Equality (``--equality``): every covered method at world sizes ``--worlds`` (e.g. 1 2 4) on the
tests' small settings; per method and world size: winner lineage, NFE and history equal to
world size 1's, and the largest relative reward difference.

    python benchmarks/distributed.py --equality --worlds 1 2 4

Writes ``benchmarks/results/distributed.json`` (speed) or ``distributed_equality.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.testing.distributed import bundled_searches, run_processes  # noqa: E402


def speed_specs(args) -> tuple[dict, list]:
    T = args.steps
    evo = [0, T * 2 // 5, T * 7 // 10]
    method = {"method": "evosearch", "options": {"evolution_schedule": evo, "population_schedule": [32] * 4,
                                                "elite_size": 4}}
    base = {**method, "steps": T, "max_batch_size": args.max_batch_size}
    warm = {"method": "best-of-n", "population": 2, "steps": 2, "max_batch_size": 2, "seed": 99}
    return base, [warm] + [{**base, "seed": 100 + k} for k in range(args.repeats)]


def run_speed(args) -> dict:
    base, specs = speed_specs(args)
    rows = []
    for world in args.worlds:
        t0 = time.perf_counter()
        ranks = run_processes(bundled_searches, world, [{**s, "distributed": world > 1} for s in specs],
                              timeout=args.timeout, threads=args.threads)
        runs = ranks[0][1:]  # rank 0's view; every rank reports the same search
        for r in ranks:
            bad = [x for x in r if "error" in x]
            if bad:
                raise RuntimeError(f"world {world}: {bad[0]['error']}: {bad[0]['message']}")
        walls = [max(r[k + 1]["seconds"]["total"] for r in ranks) for k in range(len(runs))]
        generations = len(base["options"]["population_schedule"])
        sec = lambda key: statistics.median(r["seconds"].get(key, 0.0) for r in runs)  # noqa: E731
        rows.append({"world_size": world, "wall_s": walls, "median_wall_s": statistics.median(walls),
                     "nfe": runs[0]["nfe"], "best_reward": [r["reward"] for r in runs],
                     "bytes_per_rank": runs[0]["comm_bytes"], "bytes_per_generation": runs[0]["comm_bytes"] / generations,
                     "comm_s": sec("comm"), "comm_sync_s": sec("comm_sync"), "comm_data_s": sec("comm_data"),
                     "denoise_s": sec("denoise"), "decode_s": sec("decode"), "reward_s": sec("reward"),
                     "launch_and_load_s": time.perf_counter() - t0 - sum(walls)})
    one = rows[0]["median_wall_s"]
    for row in rows:
        row["speedup"] = one / row["median_wall_s"]
        row["efficiency"] = row["speedup"] / row["world_size"]
        row["comm_share"] = row["comm_s"] / row["median_wall_s"]
        row["data_share"] = row["comm_data_s"] / row["median_wall_s"]
    same = all(r["best_reward"] == pytest_like(rows[0]["best_reward"], r["best_reward"]) for r in rows)
    print(f"EvoSearch, population {base['options']['population_schedule']}, evolution "
          f"{base['options']['evolution_schedule']}, {args.steps} steps, max_batch_size {args.max_batch_size}, "
          f"{args.threads} torch thread(s) per process, {args.repeats} repeats (median)")
    print(f"{'world':>5} {'wall s':>8} {'speedup':>8} {'effic.':>7} {'NFE':>6} {'MB/gen':>8} {'comm %':>7} "
          f"{'data %':>7} {'denoise s':>10}")
    for r in rows:
        print(f"{r['world_size']:>5} {r['median_wall_s']:>8.2f} {r['speedup']:>8.2f} {r['efficiency']:>7.2f} "
              f"{r['nfe']:>6} {r['bytes_per_generation'] / 1e6:>8.3f} {100 * r['comm_share']:>6.1f}% "
              f"{100 * r['data_share']:>6.1f}% {r['denoise_s']:>10.2f}")
    print("same winners at every world size:", same)
    return {"rows": rows, "same_winners": same, "settings": {**vars(args), "spec": base}}


def pytest_like(a, b):
    """``b`` when it equals ``a`` to float rounding (rel 1e-5), else ``a`` (so == tells)."""
    return b if np.allclose(a, b, rtol=1e-5) else a


def compare(one: dict, other: dict) -> dict:
    """World size 1 against another: what must be equal, and the largest reward difference."""
    if "error" in one or "error" in other:
        return {"error": one.get("message") or other.get("message")}
    hist = len(one["history"]) == len(other["history"]) and all(
        (a["generation"], a["step"], a["population"], a["nfe"], a["preview"]) ==
        (b["generation"], b["step"], b["population"], b["nfe"], b["preview"])
        and np.allclose(a["rewards"], b["rewards"], rtol=1e-5)
        for a, b in zip(one["history"], other["history"]))
    diffs = [abs(x - y) / max(1e-12, abs(x)) for a, b in zip(one["history"], other["history"])
             for x, y in zip(a["rewards"], b["rewards"])]
    return {"lineage": one["lineage"] == other["lineage"], "nfe": one["nfe"] == other["nfe"],
            "reward_calls": one["reward_calls"] == other["reward_calls"], "history": hist,
            "max_rel_reward_diff": max(diffs, default=0.0), "comm_bytes": other["comm_bytes"]}


def run_equality(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_distributed import EQUAL, MORE, spec  # noqa: E402 -- the tests' own settings

    methods = {**EQUAL, **MORE}
    names = list(methods)
    results = {}
    for world in args.worlds:
        ranks = run_processes(bundled_searches, world, [spec(methods[n], distributed=world > 1) for n in names],
                              timeout=args.timeout, threads=args.threads)
        results[world] = {n: [r[k] for r in ranks] for k, n in enumerate(names)}
    base = args.worlds[0]
    table = {}
    print(f"{'method':>15} {'world':>5} {'lineage':>8} {'NFE':>5} {'calls':>6} {'history':>8} {'ranks agree':>12} "
          f"{'max rel dr':>11} {'bytes/rank':>11}")
    for n in names:
        for world in args.worlds:
            c = compare(results[base][n][0], results[world][n][0])
            agree = all(compare(results[world][n][0], r).get("lineage") for r in results[world][n])
            c["ranks_agree"] = agree
            table.setdefault(n, {})[world] = c
            if "error" in c:
                print(f"{n:>15} {world:>5} error: {c['error']}")
                continue
            print(f"{n:>15} {world:>5} {str(c['lineage']):>8} {str(c['nfe']):>5} {str(c['reward_calls']):>6} "
                  f"{str(c['history']):>8} {str(agree):>12} {c['max_rel_reward_diff']:>11.2e} {c['comm_bytes']:>11}")
    return {"table": table, "settings": {**vars(args), "specs": methods}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="world sizes (default: 1 2)")
    ap.add_argument("--steps", type=int, default=10, help="num_inference_steps (default: 10)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="micro-batch per process (default: 16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per world size (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run counts as hung")
    ap.add_argument("--equality", action="store_true", help="check world-size invariance instead of timing")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/distributed[_equality].json)")
    args = ap.parse_args(argv)
    result = run_equality(args) if args.equality else run_speed(args)
    out = args.out or ROOT / "benchmarks" / "results" / ("distributed_equality.json" if args.equality
                                                         else "distributed.json")
    atomic_write_json(Path(out), result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
