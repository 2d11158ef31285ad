"""Pass infrastructure: a pass is a small object that rewrites a ModelGraph.

Shaped after torch.fx passes and onnxscript rewrite rules:

* ``candidates(mg)`` yields the nodes the pass looks at (its pattern);
* ``check(mg, node, ctx)`` returns ``None`` when the rewrite is safe, else the
  reason it is skipped (a string, never an exception);
* ``rewrite(mg, node, ctx)`` changes the graph and returns the names of the
  layers it changed.

``Pass.run`` drives these and returns a :class:`PassResult`; the
:class:`PassManager` runs passes in order and names the pass (and node) that
failed. Adding a pass is one file in this package plus one line in
``DEFAULT_PASSES`` (``bnrewrite/passes/__init__.py``).

A pass's options are given when it is constructed (``FoldBN(keep_trainable=True)``,
``CalibrateBN(data, batch_size=64)``); :meth:`Pass.from_options` builds the
default pipeline's instances from ``convert()``'s keyword arguments. The
:class:`PassContext` a run shares carries no options a built-in pass reads: only
what passes leave for the report (``artifacts``), and ``convert()``'s keyword
arguments (``options``, read-only) for a user's own pass that wants them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..errors import BnrewriteError
from ..graph import ModelGraph


@dataclass
class PassContext:
    """What a run of passes shares: ``convert()``'s keyword arguments (``options``,
    for user passes; built-in passes take theirs when constructed) and what passes
    leave for the report (``artifacts``)."""

    options: dict = field(default_factory=dict)
    #: what passes leave for the report (e.g. ``"calibration"``)
    artifacts: dict = field(default_factory=dict)


@dataclass
class PassResult:
    name: str
    changed: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"layer", "reason"}

    @property
    def modified(self) -> bool:
        return bool(self.changed)

    def to_dict(self) -> dict:
        return {"name": self.name, "changed": list(self.changed), "skipped": list(self.skipped)}


class PassError(BnrewriteError):
    """A pass raised: names the pass and the node it was rewriting."""


class Pass:
    name: str = "pass"
    description: str = ""
    #: True for a pass that changes what the model computes on purpose (a user's own
    #: rewrite): the output is then verified against the rewritten model, not the original,
    #: and the report says so. Every built-in pass preserves the inference function.
    changes_function: bool = False

    @classmethod
    def from_options(cls, options: dict) -> "Pass | None":
        """This pass as the default pipeline runs it for ``convert()``'s keyword arguments,
        or None when they switch it off (e.g. ``fold=False``)."""
        return cls()

    def candidates(self, mg: ModelGraph) -> Iterable[str]:
        raise NotImplementedError

    def check(self, mg: ModelGraph, node: str, ctx: PassContext) -> str | None:
        return None

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        raise NotImplementedError

    def run(self, mg: ModelGraph, ctx: PassContext) -> PassResult:
        result = PassResult(self.name)
        for node in list(self.candidates(mg)):
            if node not in mg.graph:  # removed by an earlier rewrite of this pass
                continue
            reason = self.check(mg, node, ctx)
            label = mg.layer(node).name
            if reason is not None:
                result.skipped.append({"layer": label, "node": node, "reason": reason})
                continue
            try:
                changed = self.rewrite(mg, node, ctx)
            except BnrewriteError:
                raise
            except Exception as e:
                raise PassError(f"pass {self.name!r} failed on {node!r}: {type(e).__name__}: {e}") from e
            for name in changed:
                if name not in result.changed:
                    result.changed.append(name)
        return result

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class PassManager:
    def __init__(self, passes: Iterable[Pass]):
        self.passes = list(passes)

    def run(self, mg: ModelGraph, ctx: PassContext | None = None) -> list[PassResult]:
        ctx = ctx or PassContext()
        results = []
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a bnrewrite Pass")
            results.append(p.run(mg, ctx))
        return results
