"""What a reader sees wrong in a figure, found from the drawn layout (matplotlib's own extents, Agg renderer).

layout_problems(fig) -> a list of sentences, empty when the figure is clean:
- a legend that covers data (a plotted point, bar, image or annotation of any axes),
- a title, label, tick label or legend cut off by the figure's edge,
- two texts that overlap (subplot titles running into each other, a tick label under a neighbour's title).
"""

from __future__ import annotations

import numpy as np
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.text import Text

SLACK = 1.0  # pixels: extents that merely touch are fine


def _overlap(a, b) -> bool:
    return (a.x0 < b.x1 - SLACK and b.x0 < a.x1 - SLACK and a.y0 < b.y1 - SLACK and b.y0 < a.y1 - SLACK)


def _visible_text(t) -> bool:
    return isinstance(t, Text) and t.get_visible() and t.get_text().strip() != ""


def _texts(fig):
    """(owner, name, Text) of every visible text the layout places: titles, axis labels, tick labels, fig texts."""
    out = []
    for i, ax in enumerate(fig.axes):
        out += [(i, "title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        if not ax.axison:  # ax.axis("off"): no labels or ticks are drawn
            continue
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            if not axis.get_visible():
                continue
            out.append((i, f"{name} label", axis.label))
            for tick in axis._update_ticks():  # only the ticks inside the view limits are drawn
                out += [(i, f"{name} tick", t) for t in (tick.label1, tick.label2)]
    out += [("figure", "text", t) for t in fig.texts]  # the suptitle is one of them
    return [(owner, name, t) for owner, name, t in out if _visible_text(t)]


def _data_boxes(ax, renderer):
    """Display-space boxes of what an axes plots: each line's points, each bar, each image, each annotation."""
    from matplotlib.transforms import Bbox

    boxes = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.column_stack([line.get_xdata(orig=False), line.get_ydata(orig=False)]))
        boxes += [Bbox.from_extents(x - 2, y - 2, x + 2, y + 2) for x, y in xy if np.isfinite(x) and np.isfinite(y)]
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_width() * patch.get_height() != 0:
            boxes.append(patch.get_window_extent(renderer))
    boxes += [im.get_window_extent(renderer) for im in ax.get_images() if isinstance(im, AxesImage)]
    boxes += [t.get_window_extent(renderer) for t in ax.texts if _visible_text(t)]
    clip = ax.get_window_extent(renderer)  # only the part of a bar or image inside the axes is seen
    return [b for b in (Bbox.intersection(b, clip) for b in boxes) if b is not None]


def layout_problems(fig) -> list[str]:
    """Every legend over data, text cut off at the figure's edge, and pair of overlapping texts in `fig`."""
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure: give it the Agg canvas savefig would use
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    page = fig.bbox
    legends = [(f"legend of axes {i}", ax.get_legend()) for i, ax in enumerate(fig.axes) if ax.get_legend()]
    legends += [(f"figure legend {j}", leg) for j, leg in enumerate(fig.legends)]
    data = [(i, box) for i, ax in enumerate(fig.axes) for box in _data_boxes(ax, renderer)]
    for name, legend in legends:
        extent = legend.get_window_extent(renderer)
        covered = sorted({i for i, box in data if _overlap(extent, box)})
        if covered:
            problems.append(f"{name} covers data of axes {covered}")
        if not (page.x0 - SLACK <= extent.x0 and extent.x1 <= page.x1 + SLACK and page.y0 - SLACK <= extent.y0
                and extent.y1 <= page.y1 + SLACK):
            problems.append(f"{name} is cut off by the figure's edge")
    texts = [(owner, name, t, t.get_window_extent(renderer)) for owner, name, t in _texts(fig)]
    for owner, name, t, box in texts:
        if box.x0 < page.x0 - SLACK or box.x1 > page.x1 + SLACK or box.y0 < page.y0 - SLACK or box.y1 > page.y1 + SLACK:
            problems.append(f"{name} {t.get_text()!r} of axes {owner} is cut off by the figure's edge")
    for a in range(len(texts)):
        for b in range(a + 1, len(texts)):
            (oa, na, ta, ba), (ob, nb, tb, bb) = texts[a], texts[b]
            if _overlap(ba, bb):
                problems.append(f"{na} {ta.get_text()!r} (axes {oa}) overlaps {nb} {tb.get_text()!r} (axes {ob})")
    return problems
