"""What the training-recipe benchmarks share: their arguments, the workspace and the validation documents.

``branch_recipes.py``, ``small_domain.py`` and ``token_recipes.py`` score models on
the validation documents the sanity check uses (no test split: they choose recipes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores  # noqa: E402


def parser(doc: str | None, workspace_help: str) -> argparse.ArgumentParser:
    """The arguments every recipe benchmark takes: -w, --preset, --cards, --out."""
    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("-w", "--workspace", type=Path, required=True, help=workspace_help)
    out.add_argument("--preset", default="tiny")
    out.add_argument("--cards", type=Path, default=Path("experts"))
    out.add_argument("--out", type=Path, default=None)
    return out


@dataclass(frozen=True)
class Bench:
    setup: Any  # moe_experts.modeling.stages.Setup
    docs: dict[str, list[str]]  # domain -> validation documents (the sanity check's)

    def score(self, folder: Path, setup: Any = None) -> dict[str, float]:
        """Bits per byte of the model in ``folder`` on every domain's validation documents."""
        from moe_experts.modeling.checkpoints import load_checkpoint
        from moe_experts.modeling.sanity import score_texts

        setup = setup or self.setup
        loaded = load_checkpoint(folder)
        window = min(setup.preset.seq_len, loaded.model.config.max_position_embeddings)
        return {d: score_texts(loaded.model, loaded.tokenizer, texts, window=window,
                               batch_size=setup.preset.batch_size).bits_per_byte for d, texts in self.docs.items()}

    def record(self, **fields: Any) -> dict[str, Any]:
        """A result's header: preset, machine, date, split; plus ``fields``."""
        return {"preset": self.setup.preset.name, "machine": device_name(), "date": dt.date.today().isoformat(),
                "split": "val", **fields}


def open_bench(args: argparse.Namespace, domains: list[str] | None = None) -> Bench:
    """The workspace of ``args`` and the validation documents of ``domains`` (default: all), counted with its
    seed's tokenizer."""
    from moe_experts.config import load_preset, load_registry
    from moe_experts.modeling.checkpoints import load_checkpoint
    from moe_experts.modeling.sanity import eval_documents
    from moe_experts.modeling.stages import SEED, Setup
    from moe_experts.workspace import Workspace

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    setup = Setup(workspace=Workspace(args.workspace), registry=load_registry(args.cards), preset=load_preset(args.preset))
    tokenizer = load_checkpoint(setup.workspace.model_dir(SEED)).tokenizer
    return Bench(setup, {d: eval_documents(setup, d, tokenizer) for d in domains or setup.registry.domains})


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{cpu_model()}, {usable_cores()} cores"
