"""The unimq MCP server (``pip install "unimq[mcp]"``): queue tools for AI assistants on any backend."""

from unimq.mcp.server import Policy, Tools, build_server, serve

__all__ = ["Policy", "Tools", "build_server", "serve"]
