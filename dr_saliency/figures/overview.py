"""The overview page: one self-contained ``index.html`` of a folder of results.

One row per image: a thumbnail of its figure (a small JPEG embedded as a ``data:`` URI, linked
to the full figure by a relative path), the predicted grade and its stage name, referable or
not (:mod:`dr_saliency.core.grades`), iterations, stop reason and the top candidates; then the
skipped files with their reasons. The table sorts by a column when its header is clicked (a few
lines of inline JavaScript). No network, no server: the page opens from the folder on a laptop.
Written atomically. ``explain`` and the demo write it after their tables.

Public API::

    write_overview(path, rows, *, title, skipped=(), notes=()) -> str
"""

import base64
import html
import io
import os

from dr_saliency.core.files import write_text
from dr_saliency.core.grades import grade_facts

__all__ = ["THUMBNAIL_SIDE", "write_overview"]

#: Longest side, in pixels, of a row's thumbnail.
THUMBNAIL_SIDE = 480

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.referable { color: #b00; font-weight: bold; } .note { color: #555; font-size: 90%; }
img.thumb { max-width: 480px; display: block; }
td.cands { white-space: nowrap; font-size: 85%; }
"""

# Click a header: sort the rows by that column's data-key (numbers as numbers), again: reverse.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var asc = !th.classList.contains("sorted-asc");
    th.closest("tr").querySelectorAll("th").forEach(function (h) {
      h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.key, y = b.cells[col].dataset.key;
      var nx = parseFloat(x), ny = parseFloat(y);
      var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_COLUMNS = ("figure", "id", "grade", "stage", "referable", "p0 → pn", "iterations",
            "stop reason", "top candidates")


def write_overview(path, rows, *, title, skipped=(), notes=()):
    """Write the overview page ``path`` (atomically).

    Args:
        path: str, the page (``.../index.html``); figures are linked relative to its folder.
        rows: list of dicts, one per image: ``id``, ``p0`` (the first prediction: the grade,
            stage and referable are computed from it unless the row has them), ``pn``,
            ``iterations``, ``stop_reason``, and optionally ``figure`` (a PNG path, or "" /
            None: no figure), ``candidates`` (list of dicts with ``x``, ``y``, ``score``),
            ``extra`` (str shown under the id, e.g. the true stage).
        title: str, the page's heading.
        skipped: list of (path, reason) pairs.
        notes: list of str, paragraphs under the heading (plain text).

    Returns:
        str, ``path``.

    Raises:
        ValueError: a row without ``id`` or ``p0``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    body = [f"<h1>{_e(title)}</h1>"]
    body += [f'<p class="note">{_e(n)}</p>' for n in notes]
    body.append(f"<p>{len(rows)} image{'s' * (len(rows) != 1)}; {len(skipped)} skipped. "
                "Click a column header to sort by it.</p>")
    body.append('<table class="sortable" id="images"><thead><tr>'
                + "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        body.append(_row_html(row, i, folder))
    body.append("</tbody></table>")
    if skipped:
        body.append('<h2>Skipped</h2><table id="skipped"><thead><tr><th>file</th><th>reason</th>'
                    "</tr></thead><tbody>")
        body += [f"<tr><td>{_e(p)}</td><td>{_e(r)}</td></tr>" for p, r in skipped]
        body.append("</tbody></table>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    write_text(path, page)
    return path


def _row_html(row, i, folder):
    if not isinstance(row, dict) or "id" not in row or "p0" not in row:
        raise ValueError(f"Expected rows[{i}] to be a dict with id and p0. Received: {row!r:.80}")
    p0 = float(row["p0"])
    facts = {**grade_facts(p0), **row}   # a row's own values win
    grade, stage, referable = int(facts["grade"]), facts["stage"], bool(facts["referable"])
    figure = row.get("figure") or ""
    if figure and os.path.isfile(figure):
        link = os.path.relpath(os.path.abspath(figure), folder).replace(os.sep, "/")
        thumb = (f'<a href="{_e(link)}"><img class="thumb" alt="figure of {_e(row["id"])}" '
                 f'src="{_thumbnail(figure)}"></a>')
    else:
        thumb = '<span class="note">no figure</span>'
    candidates = row.get("candidates") or []
    listed = "<br>".join(f"{k}. ({c['x']:g}, {c['y']:g}) score {c['score']:g}"
                         for k, c in enumerate(candidates, 1)) or "none"
    extra = f'<br><span class="note">{_e(row["extra"])}</span>' if row.get("extra") else ""
    cells = [
        (thumb, 0 if figure else 1, ""),
        (_e(row["id"]) + extra, row["id"], ""),
        (str(grade), grade, "num"),
        (_e(stage), grade, ""),
        ('<span class="referable">referable</span>' if referable else "not referable",
         int(referable), ""),
        (f"{p0:.2f} → {float(row.get('pn', p0)):.2f}", p0, "num"),
        (str(row.get("iterations", "")), row.get("iterations", ""), "num"),
        (_e(row.get("stop_reason", "")), row.get("stop_reason", ""), ""),
        (listed, len(candidates), "cands"),
    ]
    return "<tr>" + "".join(f'<td class="{cls}" data-key="{_e(key)}">{content}</td>'
                            for content, key, cls in cells) + "</tr>"


def _thumbnail(figure):
    """A ``data:`` URI of a small JPEG of ``figure`` (longest side THUMBNAIL_SIDE)."""
    from PIL import Image  # matplotlib's own image library

    with Image.open(figure) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value):
    return html.escape(str(value), quote=True)
