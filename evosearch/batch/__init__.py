"""``evosearch batch``: search many prompts, resumable, across processes and machines.

    evosearch batch prompts.txt --out runs/a --method evosearch --nfe-budget 2000
    evosearch batch prompts.txt --out runs/b --total-nfe-budget 50000
    accelerate launch --multi_gpu --num_processes 8 -m evosearch.cli batch prompts.jsonl --out runs/a

Input (PROMPTS): a ``.txt`` file, one prompt per line (blank lines and lines starting with
``#`` skipped), or a ``.jsonl`` file of objects ``{"prompt": ..., "seed"?, "id"?,
"nfe_budget"?, "negative_prompt"?, "meta"?}`` (``meta``, an object, is carried into the result
line; any other key is refused by name, so a typo never runs with a default). The
i-th prompt (0-based, counting prompts only) gets the id ``{i:05d}-{sha1(prompt)[:10]}``
unless given, and the seed ``--seed + i`` unless given.

Output (DIR):
- ``images/<id>.png``: the best sample of each prompt (native resolution);
  ``images/<id>.population.png`` too with ``--save-population``; with a total budget, a
  second wave's samples go to ``images/wave2/``;
- ``results.rank{k}.jsonl``: process k's results while a run is under way, one JSON line
  per prompt;
- ``results.jsonl``: at the end, every result merged and ordered by prompt index, one line
  per id (the shards are then removed). A line has ``status`` ``"ok"``, ``"failed"`` (with
  ``error``) or ``"interrupted"``, the NFE it spent (``nfe``) and per wave its budget, seed
  and NFE (``waves``). Paths in it are relative to DIR (bundled assets: ``bundled:<name>``).
- ``budget_plan.json`` with ``--total-nfe-budget``: the waves' budgets and the headroom
  behind them (:mod:`evosearch.batch.budget`).

A failing prompt -- its reward raises or returns NaN, the model refuses the prompt -- gets
a ``"failed"`` line and the batch goes on. A re-run skips it; ``--retry-failed`` re-runs it.

Crash safety: a result's image is written first (atomically, temporary file + rename),
then its line is appended with a single ``write`` + ``flush`` + ``fsync``. A kill therefore
leaves at worst one torn last line, which is ignored and cut off on the next run. A re-run
skips every id that has a complete line (in results.jsonl or any shard) whose image exists,
so nothing finished is lost or recomputed. Process k of n takes the prompts with
``index % n == k``; the partition depends only on the prompt file, never on what is
already done, so processes need not agree on anything before they start.
"""

from .budget import compute_plan, merge_waves, run_total_budget, wave1_budget
from .command import cmd_batch
from .prompts import BatchItem, make_items, prompt_id, read_prompts
from .results import (RESULTS, append_line, is_done, load_results, merge_results, read_jsonl, repair_jsonl, spent_nfe,
                      status)
from .runner import BatchSummary, Job, run_batch, search_one

__all__ = ["BatchItem", "BatchSummary", "Job", "RESULTS", "append_line", "cmd_batch", "compute_plan", "is_done",
           "load_results", "make_items", "merge_results", "merge_waves", "prompt_id", "read_jsonl", "read_prompts",
           "repair_jsonl", "run_batch", "run_total_budget", "search_one", "spent_nfe", "status", "wave1_budget"]
