"""The sizes of an engine directory's tensors for one request, from what its manifest states.

Every graph declares its tensors' shapes with symbols (`B`, `N_img`, `2*H_latent`, ...), and the
manifest's `dims` section defines each symbol from the request: `B` the images asked for, `H` and
`W` their height and width in pixels, and `G` the batch factor of the guidance (2 when classifier-free
guidance doubles the batch, else 1). A FLUX directory says `"N_img": "(H // 16) * (W // 16)"`, a DiT
one `"B_model": "G * B"`. The runtime sizes its buffers and TensorRT its optimization profiles from
these alone, so neither knows any family's formulas.
"""

from __future__ import annotations

import ast
from typing import Any

from ..errors import UsageError

REQUEST_SYMBOLS = ("B", "H", "W", "G")


def eval_dim(dim: int | str, values: dict[str, int]) -> int:
    """A shape entry (an int, a symbol, or `+`, `-`, `*`, `//` and brackets over them) -> its value.
    Anything else (calls, attributes, true division) is refused: a manifest is data, never code."""
    if isinstance(dim, int):
        return dim

    def ev(node) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.FloorDiv):
                if b <= 0:
                    raise ValueError
                return a // b
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        raise ValueError

    try:
        if not isinstance(dim, str) or len(dim) > 200:
            raise ValueError
        return ev(ast.parse(dim, mode="eval"))
    except (ValueError, SyntaxError, RecursionError):
        raise UsageError(f"cannot read the symbolic dimension {str(dim)[:80]!r} of this manifest; re-export the "
                         "directory") from None


def dim_values(manifest: dict, batch: int, height: int, width: int, guidance_batch: int = 1) -> dict[str, int]:
    """The value of every symbol the directory's graphs use, for one request."""
    values = {"B": batch, "H": height, "W": width, "G": guidance_batch}
    for name, expression in manifest.get("dims", {}).items():
        values[name] = eval_dim(expression, values)
    return values


def shape_of(manifest: dict, graph: str, kind: str, name: str, values: dict[str, int]) -> tuple[int, ...]:
    """The concrete shape of graph `graph`'s input or output (`kind`) `name` for these symbol values."""
    spec = next(t for t in manifest["graphs"][graph][kind] if t["name"] == name)
    return tuple(eval_dim(d, values) for d in spec["shape"])


def tensor_names(manifest: dict, graph: str, kind: str = "inputs") -> list[str]:
    return [t["name"] for t in manifest["graphs"][graph][kind]]


def symbols(shape: list[Any]) -> set[str]:
    """The names an entry of a declared shape refers to."""
    out: set[str] = set()
    for d in shape:
        if isinstance(d, str):
            try:
                out |= {n.id for n in ast.walk(ast.parse(d, mode="eval")) if isinstance(n, ast.Name)}
            except SyntaxError:
                out.add(d)
    return out
