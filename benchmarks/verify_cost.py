"""What verifying artifacts at load costs: SHA-256 of every file a load reads, against the sizes-only fast path.

    python benchmarks/verify_cost.py -w runs/tiny

Measures, in fresh processes' worth of work (the in-process memo is cleared before every timing):
- hashing throughput on this machine (a 512 MiB temporary file);
- loading the document router with MOE_EXPERTS_VERIFY=full and =size;
- loading one expert checkpoint the same two ways.
The result goes to ``benchmarks/results/verify_cost-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402


def _timed(fn, repeats: int = 5) -> float:
    import moe_experts.workspace as workspace

    times = []
    for _ in range(repeats):
        workspace._VERIFIED.clear()  # every timing hashes afresh, as a new process would
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", type=Path, required=True)
    ap.add_argument("--expert", default="law")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.routing.doc_router import DocRouter, live_dir, router_dir
    from moe_experts.workspace import sha256_file

    with tempfile.NamedTemporaryFile(dir=args.workspace, delete=False) as f:
        block = os.urandom(1 << 20)
        for _ in range(512):
            f.write(block)
        big = Path(f.name)
    try:
        started = time.perf_counter()
        sha256_file(big)
        throughput = round(512 / (time.perf_counter() - started), 1)
    finally:
        big.unlink()

    folder = router_dir(args.workspace.absolute())
    model = args.workspace.absolute() / "models" / args.expert
    sizes = {"router_bytes": sum(p.stat().st_size for p in live_dir(folder).iterdir()),
             "checkpoint_bytes": sum(p.stat().st_size for p in model.iterdir())}
    result = {"benchmark": "verify_cost", "date": dt.date.today().isoformat(),
              "machine": {"cpu": cpu_model(), "cores": usable_cores()}, "sha256_mib_per_s": throughput, **sizes}
    for mode in ("full", "size"):
        os.environ["MOE_EXPERTS_VERIFY"] = mode
        result[f"router_load_ms_{mode}"] = _timed(lambda: DocRouter.load(folder, check_embedder=False))
        result[f"checkpoint_load_ms_{mode}"] = _timed(lambda: load_checkpoint(model))
    # what hashing would cost for a larger expert at this throughput (estimates, not measurements)
    result["estimated_full_check_s"] = {f"{gb} GB": round(gb * 1024 / throughput, 1) for gb in (1, 14, 140)}
    write_result(result, args.out, f"verify_cost-{result['date']}")


if __name__ == "__main__":
    main()
