"""The ``moe-experts`` command line: parse, load config, call the library, print.

One module per command family, all registered on the group in ``app``; shared
options and the workspace accessor live in ``common``, shared tables and
summaries in ``printing``. Heavy libraries (torch, transformers, faiss) are
imported inside the commands that need them, so ``moe-experts --help`` stays
instant. Library errors are typed; ``main`` turns them into one message on
stderr and a non-zero exit code.
"""

from moe_experts.cli.app import cli, main

__all__ = ["cli", "main"]
