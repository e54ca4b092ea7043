"""mcp: what a tool call through ``kernelsup mcp`` costs an agent, beside the same call
through the control endpoint.

One ``kernelsup run`` subprocess (bench/execute.py's endpoint supervisor) serves both: a
``kernelsup mcp`` subprocess driven by the ``mcp`` package's own stdio client, and a
:class:`kernelsup.Client`. Alternating, each round:

* ``execute "1"`` as a tool call (in the MCP connection's own session: the server submits
  a job, waits for it with ``block_for``, renders and budgets the text) against the anchor,
  ``Client.execute("1")`` in a session of its own;
* 200,000 printed lines (about 1.3 MB): through MCP, where 20,000 characters reach the
  model (head and tail, the whole output spooled for ``job_output``), against
  ``Client.execute`` of the same code (its result cut at ``max_output_bytes``).
"""

from __future__ import annotations

import sys
import time

import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client

from bench.common import Report, ms, runtime_dir
from bench.execute import ROOT, endpoint_supervisor
from kernelsup import connect

ROUNDS = {"smoke": 3, "quick": 40, "full": 150}
BIG_ROUNDS = {"smoke": 1, "quick": 6, "full": 20}
BIG = "for i in range(200_000): print(i)"


def _text(result: types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def run(mode: str) -> Report:
    rounds, big_rounds = ROUNDS[mode], BIG_ROUNDS[mode]
    rep = Report("mcp", mode, params={"rounds": rounds, "big_rounds": big_rounds})
    small: dict[str, list[float]] = {"mcp": [], "client": []}
    big: dict[str, list[float]] = {"mcp": [], "client": []}
    with runtime_dir("m") as rd:
        async with endpoint_supervisor(rd / "ep") as cfg_path:
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "kernelsup", "mcp", "-c", str(cfg_path)],
                cwd=str(ROOT),
            )
            with (rd / "mcp.stderr").open("w") as errlog:
                async with (
                    stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session,
                    connect(str(cfg_path)) as client,
                ):
                    await session.initialize()

                    async def via_mcp(code: str) -> str:
                        result = await session.call_tool("execute", {"code": code})
                        assert not result.is_error, _text(result)
                        return _text(result)

                    async def via_client(code: str) -> str:
                        result = await client.execute(code, session="anchor")
                        assert result.status == "ok", result
                        return result.stdout

                    calls = {"mcp": via_mcp, "client": via_client}
                    for name in calls:  # warm up: each session bound to its kernel
                        await calls[name]("1")
                    for i in range(rounds):
                        for name in ("mcp", "client") if i % 2 == 0 else ("client", "mcp"):
                            t0 = time.perf_counter()
                            await calls[name]("1")
                            small[name].append(ms(time.perf_counter() - t0))
                    for i in range(big_rounds):
                        for name in ("mcp", "client") if i % 2 == 0 else ("client", "mcp"):
                            t0 = time.perf_counter()
                            text = await calls[name](BIG)
                            big[name].append(ms(time.perf_counter() - t0))
                            if name == "mcp":
                                assert len(text) <= 20_000 and "cut from the middle" in text
    rep.row(
        'execute "1" as an MCP tool call (kernelsup mcp, against kernelsup run)',
        "ms",
        small["mcp"],
        'Client.execute("1") through the control endpoint',
        small["client"],
    )
    rep.row(
        "200,000 lines (1.3 MB) as an MCP tool call; 20,000 characters reach the model",
        "ms",
        big["mcp"],
        "the same through Client.execute (result cut at max_output_bytes)",
        big["client"],
    )
    rep.notes.append(
        "an MCP execute is a submit and a wait, each on its own control connection "
        "(kernelsup mcp connects per call, so a restarted supervisor is found again), "
        "plus JSON-RPC over the stdio pipes and rendering"
    )
    return rep
