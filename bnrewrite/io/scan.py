"""Find everything unsafe in a model config, without building or running anything.

``inspect`` reports each finding with a stable code, so a CI pipeline can gate on it.
Unlike the readers, which stop at the first refusal, the scan visits every layer at
any depth (nested models, wrapped layers, nested objects) and reports one finding per
layer. It only reads JSON: no framework is imported.
"""

from __future__ import annotations

from ..errors import BnrewriteError
from .config import CALL_KWARGS, FREE_KWARGS
from .layercheck import MODEL_CLASSES, check_declared_shapes, check_layer


def scan_config(model_config, *, custom_classes=frozenset()) -> list[dict]:
    """``[{"code", "layer", "message"}]`` for every layer whose config is not data only
    (Lambda bytecode is reported even when the user would pass ``--unsafe``)."""
    found: list[dict] = []

    def visit(mc, path):
        cfg = mc.get("config") if isinstance(mc, dict) else None
        if isinstance(cfg, dict):
            try:
                check_declared_shapes(cfg, f"model {'/'.join(path) or 'at the top'}", mc.get("build_config"))
            except BnrewriteError as e:
                found.append({"code": e.code or "UNSUPPORTED", "layer": "/".join(path) or "(model)", "message": str(e)})
        layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") if isinstance(cfg, dict) else None
        for lc in layers or []:
            if not isinstance(lc, dict):
                continue
            cls = lc.get("class_name")
            name = lc.get("name") or (lc.get("config") or {}).get("name") or "?"
            where = "/".join((*path, str(name)))
            if cls in MODEL_CLASSES:
                visit(lc, (*path, str(name)))
                continue
            try:
                check_layer(str(cls), lc.get("config") or {}, layer_name=where, module=lc.get("module"),
                            unsafe=False, custom_classes=custom_classes, registered_name=lc.get("registered_name"),
                            build_config=lc.get("build_config"))
            except BnrewriteError as e:
                found.append({"code": e.code or "UNSUPPORTED", "layer": where, "message": str(e)})
                continue
            if cls not in FREE_KWARGS:
                bad = sorted({k for node in lc.get("inbound_nodes") or [] for k in _call_kwargs(node)} - CALL_KWARGS)
                if bad:
                    found.append({"code": "UNSAFE_CALL_ARGUMENT", "layer": where,
                                  "message": f"layer {where!r} ({cls}) is called with arguments {bad}, which "
                                             "bnrewrite does not pass to that layer"})

    visit(model_config, ())
    return found


def _call_kwargs(node) -> set:
    if isinstance(node, dict):  # Keras 3
        return set((node.get("kwargs") or {}).keys())
    keys: set = set()

    def leaves(obj):
        if isinstance(obj, list) and len(obj) == 4 and isinstance(obj[0], str) and isinstance(obj[3], dict):
            keys.update(obj[3])
        elif isinstance(obj, list):
            for o in obj:
                leaves(o)

    leaves(node)
    return keys
