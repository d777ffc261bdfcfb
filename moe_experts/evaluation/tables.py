"""Report tables: one structure, rendered to Markdown here and to HTML by html.py.

A cell is plain text; ``**text**`` marks the best value of a row (bold in both
renderings). Numbers are formatted by whoever builds the table, so the md and
the html show the same digits as report.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Table:
    title: str  # "Bits per byte (test split; lower is better)"
    header: list[str]  # ["domain", "generalist", "code", ...]
    rows: list[list[str]]  # each as long as header
    notes: list[str] = field(default_factory=list)  # lines printed under the table

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|")
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def training_run(report: dict[str, Any]) -> str:
    """How every rendering names the one training run a report scored: 'training seed 1234' ('' when the
    report predates ``training_seed``)."""
    return seed_name(report.get("training_seed"))


def seed_name(seed: int | None) -> str:
    return f"training seed {seed}" if seed is not None else ""
