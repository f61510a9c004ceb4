"""Render the report: one self-contained HTML page and its Markdown twin, written through the store.

``report.html`` embeds every picture as a ``data:`` URI and its own CSS; a Content-Security-Policy
forbids it any other source, so it opens offline from anywhere (a mail, an object-storage
console) and shows the same. ``report.md`` links the same pictures as PNG files in
``report_files/`` beside it (relative links, so the folder can be moved or synced as a whole).
All text is escaped; the output depends on the summary alone (no time stamps of its own).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

from alseg.errors import StoreError
from alseg.io import store as st
from alseg.report.content import Block, Cell, Code, Figure, Heading, Para, Table, build
from alseg.report.model import RunSummary

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
FILES_DIR = "report_files"

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2430; background: #ffffff; max-width: 1150px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; border-bottom: 3px solid #2f6fbf; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #1f4f8f; border-bottom: 1px solid #d5dbe5; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d5dbe5; padding: .3em .65em; }
th { background: #eef3fa; }
tbody tr:nth-child(even) { background: #f7f9fc; }
.left { text-align: left; }
.right { text-align: right; }
td.row-name { font-weight: 600; background: #f2f5f9; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e6ec; }
figcaption { color: #555e6b; font-size: .92em; margin-top: .3em; }
details { background: #f7f9fc; border: 1px solid #d5dbe5; padding: .5em .8em; }
summary { cursor: pointer; font-weight: 600; }
pre { overflow-x: auto; font-size: 13px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .92em; }
"""


# --------------------------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------------------------- #
def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_cell(cell: Cell, classes: Sequence[str]) -> str:
    text = f"<code>{_e(cell.text)}</code>" if cell.code else _e(cell.text)
    if cell.bold:
        text = f"<strong>{text}</strong>"
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{text}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_e(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        link = f' <a href="{_e(block.link[1])}">{_e(block.link[0])}</a>' if block.link else ""
        return f"<p>{_e(block.text)}{link}</p>"
    if isinstance(block, Table):
        align = block.alignment()
        head = "".join(f'<th class="{"left" if a == "l" else "right"}">{_e(h)}</th>' for h, a in zip(block.header, align))
        rows = []
        for row in block.rows:
            cells = [_html_cell(c, ["left" if a == "l" else "right"]
                                + (["row-name"] if i == 0 and block.first_column_header else []))
                     for i, (c, a) in enumerate(zip(row, align))]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return (f"<details><summary>{_e(block.summary)}</summary>\n"
                f'<pre><code class="language-{_e(block.language)}">{_e(block.text)}</code></pre>\n</details>')
    raise TypeError(f"unknown report block {block!r}")


def render_html(blocks: Sequence[Block], title: str) -> str:
    """The self-contained page (CSS inline, pictures as ``data:`` URIs, nothing fetched)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# --------------------------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------------------------- #
def _md_text(text: str) -> str:
    """Text safe in Markdown: HTML-escaped (no raw HTML gets through) and on one line."""
    return html.escape(" ".join(text.split()), quote=False)


def _md_code_span(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(cell: Cell) -> str:
    text = _md_code_span(" ".join(cell.text.split())) if cell.code else _md_text(cell.text)
    if cell.bold and text:
        text = f"**{text}**"
    return text.replace("|", "\\|")


def _md_block(block: Block, files_dir: str) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_md_text(block.text)}"
    if isinstance(block, Para):
        link = f" [{_md_text(block.link[0])}](<{block.link[1]}>)" if block.link else ""
        return _md_text(block.text) + link
    if isinstance(block, Table):
        header = [h.replace("|", "\\|") for h in map(_md_text, block.header)]
        lines = ["| " + " | ".join(header) + " |",
                 "| " + " | ".join(":--" if a == "l" else "--:" for a in block.alignment()) + " |"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        alt = _md_text(block.caption).replace("[", "(").replace("]", ")")
        return f"![{alt}]({files_dir}/{block.filename})\n\n*{_md_text(block.caption)}*"
    if isinstance(block, Code):
        longest = max((len(m) for m in re.findall(r"`{3,}", block.text)), default=2)
        fence = "`" * (longest + 1)
        return f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
    raise TypeError(f"unknown report block {block!r}")


def render_markdown(blocks: Sequence[Block], files_dir: str = FILES_DIR) -> str:
    """The Markdown twin; pictures are linked as ``<files_dir>/<name>.png``."""
    return "\n\n".join(_md_block(b, files_dir) for b in blocks) + "\n"


# --------------------------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------------------------- #
def _write(url: str, data: bytes) -> None:
    if st.protocol_of(url) in st.READ_ONLY_PROTOCOLS:
        raise StoreError(f"{st.redact(url)}: http(s) stores are read-only; write the report to a local path or object storage")
    fs, path = st.filesystem(url)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as fh:
            fh.write(data)
    except OSError as err:
        raise StoreError(f"cannot write {st.redact(url)}: {st._short(err)}") from err


def write_report(summary: RunSummary, out_url: str) -> dict[str, str]:
    """Write ``report.html`` and ``report.md`` (with its PNGs in ``report_files/``) into ``out_url``.

    ``out_url`` is a folder at any writable fsspec URL. Only these files are written (earlier
    versions of them replaced); nothing else in the folder is touched. Returns ``name -> URL``
    of everything written: ``html``, ``markdown`` and one entry per picture (``learning_curve``,
    ``overlays``, ``instance_sizes``, ``selection_round_NN``). Pictures and volumes that the
    summary names but that cannot be read are a :class:`~alseg.errors.DataError`, raised before
    anything is written.
    """
    blocks = build(summary)
    written: dict[str, str] = {}
    for block in blocks:
        if isinstance(block, Figure):
            url = st.join(out_url, FILES_DIR, block.filename)
            _write(url, block.png)
            written[block.key] = url
    written["markdown"] = st.join(out_url, MARKDOWN_NAME)
    _write(written["markdown"], render_markdown(blocks).encode("utf-8"))
    written["html"] = st.join(out_url, HTML_NAME)
    _write(written["html"], render_html(blocks, f"alseg run report: {summary.name}").encode("utf-8"))
    return written
