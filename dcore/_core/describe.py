"""Text and Mermaid pictures of a pipeline that show where the async boundary falls
and which stages can undo their work ("(undo)": they define ``compensate``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import pairwise

from dcore._plugins.interfaces import Dispatch, StageRef

__all__ = ["describe", "to_mermaid"]


def _split(
    refs: Sequence[StageRef], undo: Collection[int]
) -> tuple[list[str], str | None, list[str]]:
    names = [f"{r.plugin} (undo)" if i in undo else r.plugin for i, r in enumerate(refs)]
    for i, ref in enumerate(refs):
        if issubclass(ref.interface, Dispatch):
            return names[:i], ref.plugin, names[i + 1 :]
    return names, None, []


def describe(refs: Sequence[StageRef], undo: Collection[int] = ()) -> str:
    """``[sync] a → b (undo) ⇒ dispatch(x) ┆ async ┆ [background] c → d → core``;
    ``undo`` holds the indexes of the stages that compensate."""
    sync, dispatch, background = _split(refs, undo)
    if dispatch is None:
        return "[sync] " + " → ".join([*sync, "core"])
    head = "[sync] " + (" → ".join(sync) + " " if sync else "")
    tail = " → ".join([*background, "core"])
    return f"{head}⇒ dispatch({dispatch}) ┆ async ┆ [background] {tail}"


def to_mermaid(refs: Sequence[StageRef], undo: Collection[int] = ()) -> str:
    """A Mermaid flowchart with the sync and background parts as subgraphs."""
    sync, dispatch, background = _split(refs, undo)
    lines = ["flowchart LR"]
    nodes: list[str] = []

    def node(i: int, label: str, shape: str = "box") -> str:
        ident = f"s{i}"
        text = label.replace('"', "'")
        lines.append(
            f'    {ident}{"{{" if shape == "hex" else "["}"{text}"{"}}" if shape == "hex" else "]"}'
        )
        return ident

    lines.append('  subgraph sync["sync (caller)"]')
    for i, name in enumerate(sync):
        nodes.append(node(i, name))
    if dispatch is not None:
        nodes.append(node(len(sync), f"dispatch({dispatch})", "hex"))
        lines.append("  end")
        lines.append('  subgraph background["background"]')
        for j, name in enumerate(background):
            nodes.append(node(len(sync) + 1 + j, name))
    nodes.append(node(len(refs), "core"))
    lines.append("  end")
    for a, b in pairwise(nodes):
        arrow = "-. async .->" if a == f"s{len(sync)}" and dispatch is not None else "-->"
        lines.append(f"  {a} {arrow} {b}")
    return "\n".join(lines)
