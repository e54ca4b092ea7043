"""Layer 3, the supervision tree: one actor per kernel, the pool supervisor that restarts
them, the router that hands requests to them, and the event bus they report on.

May import: :mod:`kernelsup.adapters` and :mod:`kernelsup.core`.
"""
