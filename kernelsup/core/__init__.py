"""Layer 1, pure decisions: values, rules and protocols with no I/O.

Nothing here starts a task, opens a socket or a process, or imports trio or zmq; every
module is tested with plain tables. May import: the standard library, attrs, cattrs and
jupyter_client's message signing, and other modules of this package.
"""
