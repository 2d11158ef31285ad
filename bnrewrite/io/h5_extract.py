"""Read the raw contents of a Keras ``.h5`` file, meant to run in a child process.

A damaged HDF5 file can make the HDF5 C library loop forever (a flipped byte
in a global-heap address, seen when reading a variable-length string
attribute) or crash; neither can be interrupted from Python. So
:func:`bnrewrite.io.h5.read_h5` runs this file as a separate Python process
with a timeout: the child reads everything the reader needs and pickles it to
stdout; a hang or crash of the child becomes a clear error in the parent.

This module imports only h5py and numpy (no bnrewrite, no TensorFlow) so the
child starts in a fraction of a second. Result of :func:`extract`::

    {"error": None | "open: <msg>" | "damaged: <msg>",
     "attrs": {"model_config": ..., "keras_version": ..., "backend": ...},  # present ones only
     "has_layer_names": bool, "has_model_weights": bool,
     "groups": {top: {"weight_names": [...], "data": {name: ndarray | "error: <msg>"}}}}
"""

from __future__ import annotations

import pickle
import sys


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def extract(path: str) -> dict:
    import h5py
    import numpy as np

    out: dict = {"error": None, "attrs": {}, "has_layer_names": False, "has_model_weights": False,
                 "groups": {}}
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # noqa: BLE001 - any failure to open is reported, not raised
        out["error"] = f"open: {_short(e)}"
        return out
    try:
        with f:
            for key in ("model_config", "keras_version", "backend"):
                if key in f.attrs:
                    out["attrs"][key] = _text(f.attrs[key])
            out["has_layer_names"] = "layer_names" in f.attrs
            out["has_model_weights"] = "model_weights" in f
            if "model_config" not in out["attrs"] or not out["has_model_weights"]:
                return out
            mw = f["model_weights"]
            for top in mw:
                grp = mw[top]
                if not isinstance(grp, h5py.Group):
                    continue
                names = [str(_text(n)) for n in grp.attrs.get("weight_names", [])]
                data: dict = {}
                for n in names:
                    try:
                        data[n] = np.asarray(grp[n][()])
                    except Exception as e:  # noqa: BLE001 - reported when the layer is looked up
                        data[n] = f"error: {_short(e)}"
                out["groups"][top] = {"weight_names": names, "data": data}
    except Exception as e:  # noqa: BLE001
        out["error"] = f"damaged: {type(e).__name__}: {_short(e)}"
    return out


if __name__ == "__main__":
    result = extract(sys.argv[1])
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()
