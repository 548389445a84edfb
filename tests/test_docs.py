"""The docs that describe the tree are checked against it: docs/architecture.md's layer picture is
tests/test_layering.py's LAYERS (and names every allowed upward import), and README.md's Layout
names only files and folders that exist and every top-level package, module and folder of
src/kforge."""
from __future__ import annotations

import re
from pathlib import Path

from test_layering import LAYERS, UPWARD

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kforge"
# A file or folder a description names: `store.py`, `timing/`, `tests/test_layering.py`, `architecture.md`.
FILE_OR_DIR = re.compile(r"(?<![\w./<>-])(\.?\w[\w.-]*(?:/[\w.-]+)*(?:/|\.py|\.md))(?![\w/])")


def code_block_after(text: str, heading: str) -> list[str]:
    """The lines of the first ``` block after the markdown heading `heading`."""
    rest = text[text.index(heading):]
    start = rest.index("```\n") + 4
    return rest[start:rest.index("```", start)].splitlines()


def picture(text: str) -> dict[int, set[str]]:
    """Layer index -> the kforge modules its line names (`cli/` is kforge.cli, `kforge` the
    package __init__)."""
    out = {}
    for line in code_block_after(text, "## The layers"):
        m = re.match(r"\s*(\d+)  (.+?)(?:\s{2,}|$)", line)
        if m:
            names = m.group(2).split()
            out[int(m.group(1))] = {"kforge" if n == "kforge" else "kforge." + n.rstrip("/") for n in names}
    return out


def test_the_architecture_picture_is_the_layer_order():
    drawn = picture((ROOT / "docs" / "architecture.md").read_text())
    assert drawn == {i: set(members) for i, members in enumerate(LAYERS)}, (
        "docs/architecture.md's layer picture differs from tests/test_layering.py's LAYERS")


def test_the_architecture_names_every_upward_import():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"`(kforge[\w.]*)` -> `(kforge[\w.]*)`", text))
    assert listed == UPWARD


def layout() -> list[tuple[str, list[str], list[str]]]:
    """README's Layout block as (parent folder, the names its entry line starts with, the file and
    folder names in its description), one per entry: `  store.py   ...; candidate.py: ...` under
    `src/kforge/` is ("src/kforge", ["store.py"], ["candidate.py"])."""
    entries: list[tuple[str, list[str], list[str]]] = []
    parent = ""
    for line in code_block_after((ROOT / "README.md").read_text(), "## Layout"):
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if indent >= 8 and entries:  # a description's continuation line
            entries[-1][2].extend(FILE_OR_DIR.findall(line))
            continue
        head, *rest = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        names, description = head.split(), " ".join(rest)
        if indent == 0 and names[0].endswith("/") and not description:
            parent = names[0].rstrip("/")  # a heading folder: src/kforge/
            continue
        base = parent if indent else ""
        entries.append((base, names, FILE_OR_DIR.findall(description)))
        if indent == 0:
            parent = ""
    return entries


def test_the_readme_layout_names_only_what_exists():
    entries = layout()
    assert len(entries) > 20  # the parse found the block
    missing = []
    for base, names, mentioned in entries:
        for name in names:
            if not (ROOT / base / name.rstrip("/")).exists():
                missing.append(f"{base}/{name}" if base else name)
        packages = [ROOT / base / n.rstrip("/") for n in names if n.endswith("/")]
        for name in mentioned:  # inside the entry's own folder, or beside it
            if not any((where / name.rstrip("/")).exists() for where in [*packages, ROOT / base]):
                missing.append(f"{name} (in the entry of {' '.join(names)})")
    assert not missing, f"README.md's Layout names what the tree does not have: {missing}"


def test_the_readme_layout_names_every_top_level_part_of_kforge():
    named = {n.rstrip("/") for base, names, mentioned in layout() if base == "src/kforge" for n in names + mentioned}
    tree = {p.name for p in SRC.iterdir() if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")}
    assert tree - named == set(), f"src/kforge parts README.md's Layout does not name: {sorted(tree - named)}"
