"""Layer 5, the control endpoint: the server that puts a :class:`~kernelsup.api.Supervisor`
on a signed zmq socket, and the trio/asyncio and sync clients that talk to it.

May import: :mod:`kernelsup.api` (the server only) and every layer below it.
"""
