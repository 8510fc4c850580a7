"""Generated sections of Markdown pages: the block between a `<!-- NAME:begin -->` and a
`<!-- NAME:end -->` marker is rewritten by the command that owns it (scripts/speed_table.py,
scripts/make_docs.py), and the text around it is left as it is.

Imports nothing of the package.
"""


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of the generated section `name`."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, block: str, path: str = "the page") -> str:
    """`text` with the section `name` (markers included) replaced by the markers around `block`.
    Refuses (ValueError) a page without exactly one pair of the markers in order."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path} needs one {begin} ... {end} pair around its generated section")
    return text[:text.index(begin)] + f"{begin}\n{block.strip()}\n{end}" + text[text.index(end) + len(end):]
