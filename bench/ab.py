"""A/B the bnrewrite conversion of two source trees on the benchmark models, interleaved.

    # e.g. the working tree against a copy with a change undone:
    mkdir -p /tmp/before && cp -r bnrewrite /tmp/before/ && git show REV:bnrewrite/passes/fold_bn.py \\
        > /tmp/before/bnrewrite/passes/fold_bn.py
    python3 bench/ab.py --tree after=. --tree before=/tmp/before --only resnet50,densenet121 --rounds 3

Each conversion is a fresh ``bench/worker.py bnrewrite`` process with ``PYTHONPATH``
set to the tree; the trees alternate (A B, B A, ...). Prints the medians of
``ConvertReport.timings`` per tree. Models come from the cache built by
``bench/run.py`` (``bench/.cache``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, DEFAULT_CACHE, RESULT_MARK, model_specs  # noqa: E402

PHASES = ("read_s", "passes_s", "rebuild_s", "write_s", "verify_s", "total_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a folder holding bnrewrite/")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--quick", action="store_true", help="the --quick models")
    a = ap.parse_args()
    a.cache = a.cache.resolve()
    trees = dict(t.split("=", 1) for t in a.tree)
    specs = [s for s in model_specs(a.quick) if not a.only or s.name in a.only.split(",")]
    res: dict = {}
    for r in range(a.rounds):
        for s in specs:
            names = list(trees)
            for name in names[r % len(names):] + names[:r % len(names)]:
                env = dict(os.environ, PYTHONPATH=str(Path(trees[name]).resolve()), TF_CPP_MIN_LOG_LEVEL="3",
                           CUDA_VISIBLE_DEVICES="")
                dst = a.cache / "out" / f"ab.{name}.onnx"
                dst.parent.mkdir(parents=True, exist_ok=True)
                t = time.perf_counter()
                p = subprocess.run([sys.executable, str(BENCH / "worker.py"), "bnrewrite", str(a.cache / s.file),
                                    str(dst)], env=env, capture_output=True, text=True, cwd="/")
                wall = time.perf_counter() - t
                lines = [l for l in p.stdout.splitlines() if l.startswith(RESULT_MARK)]
                if not lines:
                    print(f"{s.name} {name}: failed: {p.stderr.strip().splitlines()[-1:]}")
                    continue
                d = json.loads(lines[0][len(RESULT_MARK):])
                d["wall_s"] = wall
                res.setdefault(s.name, {}).setdefault(name, []).append(d)
                print(f"{s.name} {name} round {r + 1}: wall {wall:.2f} s, "
                      + " ".join(f"{k[:-2]} {d['timings'][k]:.2f}" for k in PHASES), flush=True)
    print("\nmedians (s):")
    for model, by_tree in res.items():
        for name, runs in by_tree.items():
            med = {k: statistics.median(d["timings"][k] for d in runs) for k in PHASES}
            print(f"{model:16} {name:10} wall {statistics.median(d['wall_s'] for d in runs):6.2f} "
                  + " ".join(f"{k[:-2]} {v:6.2f}" for k, v in med.items())
                  + f"  nodes {runs[-1]['nodes']}  fold_bn {runs[-1]['passes'].get('fold_bn')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
