"""Layer 1, pure decisions: values, rules and protocols with no I/O.

Nothing here starts a task, opens a socket or a process, or imports trio or zmq; every
module is tested with plain tables. May import: the standard library, attrs, cattrs, and
other modules of this package (the wire format is written here byte for byte as
jupyter_client's; its packer is imported only for a value plain JSON cannot write).
"""
