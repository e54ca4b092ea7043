"""The control endpoint's session (snapshots too), job and file requests: each decoded request
(core/protocol.py) to its Supervisor call (api.py) and the reply's value.

Kept apart from server.py, which routes, bounds and answers every request: these only
translate. File bytes travel as base64 in the JSON messages, so a put is bounded by the
server's ``max_message_bytes`` as well as by ``max_file_bytes``.
"""

from __future__ import annotations

import base64

from kernelsup.api import Supervisor
from kernelsup.core import protocol as proto
from kernelsup.core.errors import Rejected


async def agent_request(sup: Supervisor, req: proto.Request) -> proto.Result | None:
    """The session, job and file requests (tree/jobs.py, tree/files.py); None for others."""
    if isinstance(req, proto.OpenSession):
        info = await sup.open_session(
            req.name,
            pool=req.pool,
            cwd=req.cwd,
            env=req.env,
            idle_timeout=req.idle_timeout,
            lifetime=req.lifetime,
        )
        return proto.Result({"session": info.to_dict()})
    if isinstance(req, proto.Sessions):
        return proto.Result({"sessions": [s.to_dict() for s in await sup.sessions()]})
    if isinstance(req, proto.Submit):
        job = await sup.submit(req.code, session=req.session, pool=req.pool, timeout=req.timeout)
        return proto.Result({"job": job.to_dict()})
    if isinstance(req, proto.JobQuery):
        return proto.Result({"job": (await sup.job(req.job_id)).to_dict()})
    if isinstance(req, proto.WaitJob):
        result = await sup.wait(req.job_id, req.timeout)
        return proto.Result({"result": result.to_dict() if result is not None else None})
    if isinstance(req, proto.JobOutputQuery):
        return proto.Result((await sup.job_output(req.job_id, req.offset, req.limit)).to_dict())
    if isinstance(req, proto.CancelJob):
        return proto.Result({"cancelled": await sup.cancel(req.job_id)})
    if isinstance(req, proto.Jobs):
        return proto.Result({"jobs": [j.to_dict() for j in await sup.jobs()]})
    if isinstance(req, proto.PutFile):
        try:
            data = base64.b64decode(req.data, validate=True)
        except ValueError:
            raise Rejected("put_file: data is not valid base64", code="bad_request") from None
        await sup.put_file(req.session, req.path, data)
        return proto.Result({"size": len(data)})
    if isinstance(req, proto.GetFile):
        data = await sup.get_file(req.session, req.path)
        return proto.Result({"data": base64.b64encode(data).decode("ascii")})
    if isinstance(req, proto.ListFiles):
        return proto.Result({"names": await sup.list_files(req.session, req.path)})
    if isinstance(req, proto.Snapshot):
        return proto.Result({"snapshot": (await sup.snapshot(req.session)).to_dict()})
    if isinstance(req, proto.Restore):
        restored = await sup.restore(req.session, req.snapshot_id)
        return proto.Result({"restore": restored.to_dict()})
    if isinstance(req, proto.ForkSession):
        forked = await sup.fork_session(req.source, req.name)
        return proto.Result({"restore": forked.to_dict()})
    return None


__all__ = ["agent_request"]
