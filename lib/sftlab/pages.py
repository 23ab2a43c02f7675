"""Make an HTML page self-contained and readable anywhere: nothing loaded from the network, Korean drawn even on
a machine without Korean fonts.

`self_contained(page)`:
- removes every `<script src=...>` and `<link href=...>` that points off the page, and inline scripts that import
  from the network (nbconvert's template asks cdnjs for require.js, MathJax and Mermaid; the widget renderer, from
  unpkg, is kept out by `reports.without_widgets`): opened offline such a page waits on
  failing requests, opened online it tells third parties who reads the report. The reports need neither:
  tables are inlined DataTables (`sftlab.explorer`), figures are data URIs, text is text.
- adds a font stack led by an embedded web font for Hangul and CJK only: NanumGothic (shipped with
  `koreanize-matplotlib`, the figures' font) cut down to the Hangul and CJK characters the page holds, so the page
  carries tens of kilobytes of font, not megabytes; Latin text is drawn by the machine's own fonts.

The one sftlab style (`rules`: font stacks for text and code, the tables' look) is used by every HTML sftlab
emits, at one of three scopes:
- a whole page (`self_contained`: the reports; `:root` and `body`);
- a fragment shown inside Jupyter (`box`: the explorer's tables, the rubric, the labelling form), where the page is
  JupyterLab's own: the fragment carries its own cut of the font under a family name of its own, scoped to its box,
  so nothing leaks into JupyterLab's interface and boxes never override each other's glyphs;
- a page that is also shown inline in Jupyter (`styled`: the train label audit), scoped to its root element.
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
# The embedded font comes first: its unicode-range holds only the CJK ranges, so Latin text falls through to the
# machine's fonts, while Korean is always drawn by it. Last in the stack, as a fallback, Chromium drew the first
# Korean text of a page or box with the fallback's empty boxes even after the font had loaded (tests/test_labelling).
TEXT_STACK = (f'"{FONT_FAMILY}", system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
              f'{KOREAN_FONTS}, sans-serif')
CODE_STACK = (f'"{FONT_FAMILY}", Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", "Noto Sans Mono CJK KR", '
              f'"D2Coding", {KOREAN_FONTS}, monospace')

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
    wanted = frozenset(c for c in codepoints if c in _cmap())
    return _font_face(wanted, family) if wanted else ""


@functools.lru_cache(maxsize=64)  # the labelling form asks again for each answer it shows again
def _font_face(wanted: frozenset[int], family: str) -> str:
    from fontTools import subset

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # it warns of every table it drops
    options = subset.Options()
    options.flavor = "woff"
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(font_file()), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(wanted))
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    ranges = ", ".join(f"U+{low:X}-{high:X}" for low, high in CJK_RANGES)
    return (f'@font-face {{ font-family: "{family}"; font-style: normal; font-weight: 100 900; '
            f'src: url(data:font/woff;base64,{data}) format("woff"); unicode-range: {ranges}; }}\n')


def stacks(family: str = FONT_FAMILY) -> tuple[str, str]:
    """(text, code) font stacks ending in the embedded font `family`."""
    if family == FONT_FAMILY:
        return TEXT_STACK, CODE_STACK
    return (TEXT_STACK.replace(f'"{FONT_FAMILY}"', f'"{family}"'), CODE_STACK.replace(f'"{FONT_FAMILY}"', f'"{family}"'))


def rules(scope: str, family: str = FONT_FAMILY, monospace: bool = False) -> str:
    """The one sftlab style for the elements under the CSS selector `scope`: text in the text stack (the code stack
    when `monospace`), code in the code stack, form controls and tables inheriting it; both stacks start with the
    embedded font `family`. (The tables' own look is `sftlab.tables`.)"""
    text, code = stacks(family)
    under = lambda *selectors: ", ".join(f"{scope} {s}" for s in selectors)  # noqa: E731
    return (f"{scope} {{ font-family: {code if monospace else text}; }}\n"
            f"{under('pre', 'code', 'kbd', 'samp')} {{ font-family: {code}; }}\n"
            f"{under('pre')} {{ white-space: pre-wrap; overflow-wrap: anywhere; }}\n"
            f"{under('input', 'select', 'textarea', 'button', 'table', '.dt-container')} {{ font-family: inherit; }}\n")


def style(page: str) -> str:
    """The `<style>` element that self_contained adds: the embedded font for this page and the font stacks."""
    return (f'<style id="sftlab-fonts">\n{font_face(characters(page))}'
            f":root {{ --jp-ui-font-family: {TEXT_STACK}; --jp-content-font-family: {TEXT_STACK}; "
            f"--jp-code-font-family: {CODE_STACK}; }}\n"
            + rules("body") + "</style>")


def _family(codepoints: set[int]) -> str:
    """A family name per set of characters: two boxes share a name only when they carry the same font cut."""
    return f"{FONT_FAMILY} {hashlib.sha1(','.join(map(str, sorted(codepoints))).encode()).hexdigest()[:10]}"


def scoped_style(fragment: str, scope: str, monospace: bool = False) -> str:
    """A `<style>` for the elements under `scope`: the shared rules and NanumGothic cut to the Korean `fragment`
    holds, under a family name of its own (so that it overrides no other box's font)."""
    codepoints = characters(fragment)
    family = _family(codepoints)
    return f"<style>{font_face(codepoints, family)}{rules(scope, family, monospace)}</style>"


def box(fragment: str, monospace: bool = False) -> str:
    """`fragment` in a box that carries the sftlab style and its own cut of NanumGothic for the Korean it holds: a
    notebook open in Jupyter, which has no page-level font of ours, draws its Hangul on a machine without Korean
    fonts too."""
    name = "sftlab-ko-" + _family(characters(fragment)).rsplit(" ", 1)[1] + ("-mono" if monospace else "")
    # two classes: JupyterLab's own rules for its output (`.jp-RenderedHTMLCommon pre`) are as specific as one
    scope = f".sftlab-box.{name}"
    return f'<div class="sftlab-box {name}">{scoped_style(fragment, scope, monospace)}{fragment}</div>'


def styled(page: str, scope: str, monospace: bool = False) -> str:
    """A whole page (`<head>` and all) with the shared style scoped to `scope`, for a page that is also shown
    inline in Jupyter, where page-level rules (`body`, `:root`) would restyle JupyterLab itself."""
    fonts = scoped_style(page, scope, monospace)
    head_end = page.lower().rfind("</head>")
    return fonts + page if head_end < 0 else page[:head_end] + fonts + page[head_end:]


class Html(str):
    """HTML that Jupyter displays as HTML and that prints as itself (a plain string)."""

    def _repr_html_(self) -> str:
        return str(self)


def _remote_imports(page: str) -> list[str]:
    """Inline scripts that import modules from the network (nbconvert's Mermaid loader does, from cdnjs)."""
    return [m.group(0) for m in _INLINE_SCRIPT.finditer(page) if _REMOTE_IMPORT.search(m.group(1))]


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
