"""Layer 2, OS and I/O adapters: zmq on trio, launching kernel processes, containment,
the runtime directory.

Each module wraps one outside thing (a socket, a process, a directory) and maps its
errors to :mod:`kernelsup.core.errors`, through the one table of
:mod:`kernelsup.adapters.io_errors`. May import: :mod:`kernelsup.core`.
"""
