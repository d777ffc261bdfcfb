"""moe-experts: domain-expert language models behind one learned router.

The public API is one object, imported lazily so that ``import moe_experts`` stays instant::

    from moe_experts import MoE

    moe = MoE.open(cards="experts", preset="tiny")
    moe.build()
    moe.route(["What is the ICD-10 code for asthma?"])[0].expert
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "MoE": "moe_experts.api", "Report": "moe_experts.api", "Target": "moe_experts.api",
    "BuildResult": "moe_experts.api", "RouterInfo": "moe_experts.api",
    "AddResult": "moe_experts.lifecycle", "RemoveResult": "moe_experts.lifecycle",
    "RoutingDecision": "moe_experts.routing.doc_router", "DocRouter": "moe_experts.routing.doc_router",
    "Answer": "moe_experts.inference.ask",
    "MoeExpertsError": "moe_experts.errors",
}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from moe_experts.api import BuildResult, MoE, Report, RouterInfo, Target  # noqa: F401
    from moe_experts.errors import MoeExpertsError  # noqa: F401
    from moe_experts.lifecycle import AddResult, RemoveResult  # noqa: F401
    from moe_experts.inference.ask import Answer  # noqa: F401
    from moe_experts.routing.doc_router import DocRouter, RoutingDecision  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'moe_experts' has no attribute {name!r}")
