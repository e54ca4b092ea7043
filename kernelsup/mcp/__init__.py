"""``kernelsup mcp``: an MCP server over stdio giving coding agents supervised kernels.

Needs the ``mcp`` extra (``pip install 'kernelsup[mcp]'``). ``render`` turns results into
what an agent reads (pure); ``server`` holds the tools, the backends and the stdio loop.
"""
