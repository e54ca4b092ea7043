"""Layer 6, ``kernelsup mcp``: an MCP server over stdio giving coding agents supervised
kernels. May import :mod:`kernelsup.control`, :mod:`kernelsup.api` and every layer below.

Needs the ``mcp`` extra (``pip install 'kernelsup[mcp]'``). ``render`` turns results into
what an agent reads (pure); ``server`` holds the tools, the backends and the stdio loop.
"""
