"""Make an HTML page self-contained and readable anywhere: nothing loaded from the network, Korean drawn even on
a machine without Korean fonts.

`self_contained(page)`:
- removes every `<script src=...>` and `<link href=...>` that points off the page, and inline scripts that import
  from the network (nbconvert's template asks cdnjs for require.js, MathJax and Mermaid; the widget renderer, from
  unpkg, is kept out by `reports.without_widgets`): opened offline such a page waits on
  failing requests, opened online it tells third parties who reads the report. The reports need neither:
  tables are inlined DataTables (`sftlab.explorer`), figures are data URIs, text is text.
- adds a font stack for Korean (Noto Sans KR, Nanum Gothic, Malgun Gothic, Apple SD Gothic Neo: the machine's own
  font when it has one) ending in an embedded web font: NanumGothic (shipped with `koreanize-matplotlib`, the
  figures' font) cut down to the Hangul and CJK characters the page holds, so the page carries tens of kilobytes
  of font, not megabytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import importlib.util
import io
import logging
import re
from pathlib import Path

FONT_FAMILY = "sftlab NanumGothic"
# Hangul Jamo, CJK symbols and punctuation, Hangul compatibility Jamo, Kanbun..CJK compatibility, Hangul
# Jamo extended, Hangul syllables, CJK unified ideographs (Hanja), compatibility ideographs, full-width forms.
CJK_RANGES = ((0x1100, 0x11FF), (0x3000, 0x33FF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7FF),
              (0xF900, 0xFAFF), (0xFF00, 0xFFEF))
KOREAN_FONTS = '"Noto Sans KR", "Nanum Gothic", NanumGothic, "Malgun Gothic", "Apple SD Gothic Neo"'
TEXT_STACK = (f'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, {KOREAN_FONTS}, '
              f'"{FONT_FAMILY}", sans-serif')
CODE_STACK = (f'Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", "Noto Sans Mono CJK KR", "D2Coding", '
              f'{KOREAN_FONTS}, "{FONT_FAMILY}", monospace')

_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*</script>", re.I)
_REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>", re.I)
_INLINE_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.I | re.S)
_REMOTE_IMPORT = re.compile(r"""(?:\bimport\s*\(|\bfrom)\s*["'](?:https?:)?//""")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def font_file() -> Path:
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or spec.origin is None:
        raise ImportError("the reports' Korean font comes with the package koreanize-matplotlib: "
                          "pip install koreanize-matplotlib")
    return Path(spec.origin).parent / "fonts" / "NanumGothic.ttf"


def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in CJK_RANGES)


def characters(page: str) -> set[int]:
    """Hangul and CJK code points the page shows: in its text and markup (entities decoded) and in inline data
    (JSON `\\uXXXX` escapes, as DataTables' rows are written)."""
    found = set(map(ord, set(html.unescape(page))))  # set() first: a page is megabytes, its alphabet is small
    found |= {int(h, 16) for h in _JSON_ESCAPE.findall(page)}
    return {c for c in found if _is_cjk(c)}


@functools.lru_cache(maxsize=1)
def _cmap() -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(font_file(), lazy=True) as font:
        return frozenset(font.getBestCmap())


def font_face(codepoints: set[int], family: str = FONT_FAMILY) -> str:
    """An @font-face rule with NanumGothic cut to `codepoints` (WOFF, base64 data URI); '' when none is needed."""
    from fontTools import subset

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # it warns of every table it drops
    wanted = sorted(c for c in codepoints if c in _cmap())
    if not wanted:
        return ""
    options = subset.Options()
    options.flavor = "woff"
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(font_file()), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=wanted)
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    ranges = ", ".join(f"U+{low:X}-{high:X}" for low, high in CJK_RANGES)
    return (f'@font-face {{ font-family: "{family}"; font-style: normal; font-weight: 100 900; '
            f'src: url(data:font/woff;base64,{data}) format("woff"); unicode-range: {ranges}; }}\n')


def style(page: str) -> str:
    """The `<style>` element that self_contained adds: the embedded font for this page and the font stacks."""
    return (f'<style id="sftlab-fonts">\n{font_face(characters(page))}'
            f":root {{ --jp-ui-font-family: {TEXT_STACK}; --jp-content-font-family: {TEXT_STACK}; "
            f"--jp-code-font-family: {CODE_STACK}; }}\n"
            f"body, table.dataTable, .dt-container {{ font-family: {TEXT_STACK}; }}\n"
            f"pre, code, kbd, samp {{ font-family: {CODE_STACK}; }}\n"
            "input, select, textarea, button { font-family: inherit; }\n</style>")


def _remote_imports(page: str) -> list[str]:
    """Inline scripts that import modules from the network (nbconvert's Mermaid loader does, from cdnjs)."""
    return [m.group(0) for m in _INLINE_SCRIPT.finditer(page) if _REMOTE_IMPORT.search(m.group(1))]


def korean_box(fragment: str) -> str:
    """`fragment` (a table's HTML) in a box that carries its own cut of NanumGothic for the Korean it holds: a
    notebook open in Jupyter, which has no page-level font of ours, draws its Hangul on a machine without
    Korean fonts too. Each box's font has its own family name, so boxes never override each other's glyphs."""
    codepoints = characters(fragment)
    if not codepoints:
        return fragment
    key = hashlib.sha1(",".join(map(str, sorted(codepoints))).encode()).hexdigest()[:10]
    family, box = f"{FONT_FAMILY} {key}", f"sftlab-ko-{key}"
    stack = TEXT_STACK.replace(", sans-serif", f', "{family}", sans-serif')
    return (f'<div class="{box}"><style>{font_face(codepoints, family)}'
            f".{box}, .{box} table, .{box} input, .{box} .dt-container {{ font-family: {stack}; }}</style>"
            f"{fragment}</div>")


def remote_resources(page: str) -> list[str]:
    """The tags of `page` that would load something from the network."""
    return _REMOTE_SCRIPT.findall(page) + _REMOTE_LINK.findall(page) + _remote_imports(page)


def self_contained(page: str) -> str:
    page = _REMOTE_LINK.sub("", _REMOTE_SCRIPT.sub("", page))
    for script in _remote_imports(page):
        page = page.replace(script, "")
    if 'id="sftlab-fonts"' in page:
        return page
    fonts = style(page)
    head_end = page.lower().rfind("</head>")
    if head_end < 0:
        return fonts + page
    return page[:head_end] + fonts + "\n" + page[head_end:]
