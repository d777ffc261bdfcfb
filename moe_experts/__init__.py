"""moe-experts: domain-expert language models behind one learned router."""

__version__ = "0.1.0"
