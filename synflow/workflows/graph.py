"""The text picture of a workflow's graph that the ``init_*_wf`` docstrings carry.

:func:`graph_text` renders the top-level nodes and sub-workflows of a built workflow, in a
stable topological order, one line per node with what it feeds::

    extract_b0 -> b0_to_reference, median_otsu, ...

``tests/test_workflows.py`` builds every factory and checks that its docstring holds
exactly this text, so the drawing cannot drift from the graph: after changing a graph,
paste the new ``graph_text`` output into the docstring.
"""

from __future__ import annotations

import textwrap

import networkx as nx
from nipype.pipeline import engine as pe

__all__ = ["graph_text"]


def graph_text(workflow: pe.Workflow, indent: str = "", width: int = 88) -> str:
    """``name -> successor, ...`` per top-level node of ``workflow`` (names sorted).

    Lines longer than ``width`` characters (not counting ``indent``) continue under the
    first successor.
    """
    graph = workflow._graph
    lines = []
    for node in nx.lexicographical_topological_sort(graph, key=lambda n: n.name):
        successors = sorted(s.name for s in graph.successors(node))
        if not successors:
            lines.append(indent + node.name)
            continue
        head = f"{indent}{node.name} -> "
        lines += textwrap.wrap(", ".join(successors), width=width + len(indent),
                               initial_indent=head,
                               subsequent_indent=" " * len(head), break_on_hyphens=False)
    return "\n".join(lines)
