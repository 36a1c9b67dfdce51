"""Which benchmark shapes run: SST_FAST_BENCH_SHAPES (comma-separated names) or each module's default."""

import os


def selected(shapes: dict, default: tuple[str, ...]) -> dict:
    """The shapes named in SST_FAST_BENCH_SHAPES, else ``default``; an unknown name is an error."""
    names = [n.strip() for n in os.environ.get("SST_FAST_BENCH_SHAPES", "").split(",") if n.strip()] or default
    unknown = [name for name in names if name not in shapes]
    if unknown:
        raise ValueError(f"SST_FAST_BENCH_SHAPES names unknown shape(s) {unknown}; known: {sorted(shapes)}")
    return {name: shapes[name] for name in names}
