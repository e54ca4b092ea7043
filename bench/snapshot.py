"""snapshot: what saving and restoring a session's namespace costs (issue 18).

For three namespaces an agent typically holds, each round, alternating the order:

* ``Supervisor.snapshot(session)`` (cloudpickle inside the kernel, one file, a JSON
  report the supervisor reads), timed from the call to its return;
* the anchor: the same names written with the standard ``pickle.dump`` in the same kernel
  by one plain ``execute`` (what a user would do by hand, without bounds or a report);
* ``Supervisor.restore(session)`` of that snapshot, against ``pickle.load`` of the
  anchor's file by one ``execute``.

The namespaces: ``frame``, a 100 MB float64 array (a DataFrame's worth of data; 5 MB in
smoke mode); ``objects``, 10,000 small dicts; ``model``, a fitted-model-sized object
(twenty 256x256 weight matrices, about 10 MB, and a 50,000-entry vocabulary).

Then the latency that ``checkpoint = "after_execute"`` adds to each request: a small
execute in a session of a pool with checkpoints against the same in a pool without, with
a small namespace and with ``objects`` held. The snapshot runs on the session's own
kernel under its lock: other kernels are never waited for (tests/test_session_snapshots.py
checks that).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from kernelsup.api import Supervisor

ROUNDS = {"smoke": 1, "quick": 3, "full": 7}
LATENCY_N = {"smoke": 4, "quick": 30, "full": 100}
FRAME_MB = {"smoke": 5, "quick": 100, "full": 100}

# numpy when the kernel has it (the test extra does), else the standard library's array:
# the same bytes, the same pickling path (a buffer).
SETUP = {
    "frame": (
        "try:\n"
        "    import numpy as _np\n"
        "    frame = _np.random.default_rng(0).random({n} * 131072)\n"
        "except ImportError:\n"
        "    import array as _array\n"
        "    frame = _array.array('d', bytes({n} * 1048576))\n"
    ),
    "objects": (
        "objects = [{{'id': i, 'name': f'item{{i}}', 'tags': ['a', 'b'], 'score': i / 7}}"
        " for i in range(10_000)]\n"
    ),
    "model": (
        "try:\n"
        "    import numpy as _np\n"
        "    _w = lambda i: _np.random.default_rng(i).random((256, 256))\n"
        "except ImportError:\n"
        "    import array as _array\n"
        "    _w = lambda i: _array.array('d', bytes(256 * 256 * 8))\n"
        "class Model:\n"
        "    def __init__(self):\n"
        "        self.layers = [_w(i) for i in range(20)]\n"
        "        self.vocab = {{f'token{{i}}': i for i in range(50_000)}}\n"
        "model = Model()\n"
    ),
}


def _dump(names: list[str], path: Path) -> str:
    """One execute that pickles ``names`` to ``path``, leaving no name behind."""
    picked = ", ".join(f"{n!r}: {n}" for n in names)
    body = "import pickle\nwith open(P, 'wb') as f:\n    pickle.dump(D, f, 5)\n"
    return f"exec({body!r}, {{'P': {str(path)!r}, 'D': {{{picked}}}}})"


def _load(path: Path) -> str:
    """One execute that loads ``path``'s names into the user's namespace."""
    body = "import pickle\nwith open(P, 'rb') as f:\n    G.update(pickle.load(f))\n"
    return f"exec({body!r}, {{'P': {str(path)!r}, 'G': globals()}})"


async def _timed_ok(sup: Supervisor, code: str, session: str) -> float:
    t0 = time.perf_counter()
    r = await sup.execute(code, session=session)
    elapsed = time.perf_counter() - t0
    assert r.status == "ok", r
    return elapsed


async def run(mode: str) -> Report:
    rounds = ROUNDS[mode]
    rep = Report(
        "snapshot",
        mode,
        params={"rounds": rounds, "latency_requests": LATENCY_N[mode], "frame_mb": FRAME_MB[mode]},
    )
    sizes: dict[str, int] = {}
    with runtime_dir("n") as rd:
        cfg = config_dict(
            pool_config("ckpt", size=1, spares=1, checkpoint="after_execute"),
            pool_config("plain", size=1, spares=1),
        )
        async with K.supervisor(cfg, rd / "rt") as (sup, _bus):
            await K.settle(sup)
            for kind, setup in SETUP.items():
                session = f"ns-{kind}"
                await sup.open_session(session, pool="plain")
                await _timed_ok(sup, setup.format(n=FRAME_MB[mode]), session)
                names = [n for n in ("frame", "objects", "Model", "model") if n in setup]
                anchor_file = rd / f"{kind}.pkl"
                save: dict[str, list[float]] = {"ks": [], "anchor": []}
                load: dict[str, list[float]] = {"ks": [], "anchor": []}
                for i in range(rounds):
                    for side in ("ks", "anchor") if i % 2 == 0 else ("anchor", "ks"):
                        if side == "ks":
                            t0 = time.perf_counter()
                            info = await sup.snapshot(session)
                            save["ks"].append(ms(time.perf_counter() - t0))
                            sizes[kind] = info.bytes
                            assert not info.skipped, info.skipped
                            t0 = time.perf_counter()
                            back = await sup.restore(session, info.id)
                            load["ks"].append(ms(time.perf_counter() - t0))
                            assert not back.not_restored, back.not_restored
                        else:
                            dump = _dump(names, anchor_file)
                            save["anchor"].append(ms(await _timed_ok(sup, dump, session)))
                            reload = _load(anchor_file)
                            load["anchor"].append(ms(await _timed_ok(sup, reload, session)))
                rep.row(
                    f"snapshot of {kind} ({sizes[kind] / 1e6:.1f} MB)",
                    "ms",
                    save["ks"],
                    "pickle.dump of the same names in the kernel (one execute)",
                    save["anchor"],
                    detail=f"{sizes[kind]} bytes on disk",
                )
                rep.row(
                    f"restore of {kind}",
                    "ms",
                    load["ks"],
                    "pickle.load of the anchor's file in the kernel (one execute)",
                    load["anchor"],
                )
                await sup.close_session(session)
            # what checkpoint = "after_execute" adds to each request
            for held in ("", SETUP["objects"].format(n=0)):
                lat: dict[str, list[float]] = {"ckpt": [], "plain": []}
                for pool in ("ckpt", "plain"):
                    await sup.open_session(f"lat-{pool}", pool=pool)
                    await _timed_ok(sup, "i = 0\n" + held, f"lat-{pool}")
                for i in range(LATENCY_N[mode]):
                    for pool in ("ckpt", "plain") if i % 2 == 0 else ("plain", "ckpt"):
                        lat[pool].append(ms(await _timed_ok(sup, "i += 1", f"lat-{pool}")))
                for pool in ("ckpt", "plain"):
                    await sup.close_session(f"lat-{pool}")
                what = "10,000 small objects held" if held else "a small namespace"
                rep.row(
                    f"execute 'i += 1' in a session, checkpoint after_execute, {what}",
                    "ms",
                    lat["ckpt"],
                    "the same, checkpoint off",
                    lat["plain"],
                )
    rep.notes.append(
        "snapshot and restore include the request round trip and the JSON report; the "
        "anchors are one execute each, with no bound on size or time and no report"
    )
    return rep
