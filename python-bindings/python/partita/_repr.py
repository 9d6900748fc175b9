"""Notebook reprs: summary tables and a chunk-grid picture like Dask's."""

import html


def _bytes(n):
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _grid_svg(chunks, size=120):
    """Rectangles for the chunk boundaries of the last two axes."""
    rows = chunks[-2] if len(chunks) >= 2 else (1,)
    cols = chunks[-1] if chunks else (1,)
    total_r, total_c = max(sum(rows), 1), max(sum(cols), 1)
    scale = size / max(total_r, total_c)
    h, w = max(total_r * scale, 10), max(total_c * scale, 10)
    lines = []
    y = 0.0
    for r in list(rows)[:50]:
        lines.append(f'<line x1="0" y1="{y:.1f}" x2="{w:.1f}" y2="{y:.1f}" style="stroke-width:1" />')
        y += r * scale
    x = 0.0
    for c in list(cols)[:50]:
        lines.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h:.1f}" style="stroke-width:1" />')
        x += c * scale
    lines.append(f'<rect x="0" y="0" width="{w:.1f}" height="{h:.1f}" style="fill:#8B4903A0;stroke-width:2" />')
    return f'<svg width="{w + 4:.0f}" height="{h + 4:.0f}" style="stroke:rgb(0,0,0)">{"".join(lines)}</svg>'


def array_html(a):
    if not a.known:
        rows = [
            ("Shape", a.shape, "unknown along axis 0"),
            ("Dtype", a.dtype, a.dtype),
            ("Chunks", f"{a.npartitions} chunks", "sizes unknown until compute_chunk_sizes()"),
        ]
        table = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td><td>{html.escape(str(c))}</td></tr>" for k, v, c in rows)
        return f'<table><thead><tr><td></td><th>Array</th><th>Chunk</th></tr></thead>{table}</table>'
    chunk = tuple(max(c) if c else 0 for c in a.chunks)
    chunk_bytes = a.dtype.itemsize
    for c in chunk:
        chunk_bytes *= c
    rows = [
        ("Bytes", _bytes(a.nbytes), _bytes(chunk_bytes)),
        ("Shape", a.shape, chunk),
        ("Dtype", a.dtype, a.dtype),
        ("Chunks", f"{a.npartitions} chunks", ""),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td><td>{html.escape(str(c))}</td></tr>" for k, v, c in rows)
    return (
        '<table><tr><td><table><thead><tr><td></td><th>Array</th><th>Chunk</th></tr></thead>'
        f"{table}</table></td><td>{_grid_svg(a.chunks)}</td></tr></table>"
    )


def frame_html(f):
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in f.schema.keys())
    dtypes = "".join(f"<td>{html.escape(str(v))}</td>" for v in f.schema.values())
    return (
        f"<div><strong>partita.DataFrame</strong> with {f.npartitions} partitions, "
        f"{f.graph_size()} tasks<table><thead><tr>{head}</tr></thead><tbody><tr>{dtypes}</tr></tbody></table></div>"
    )
