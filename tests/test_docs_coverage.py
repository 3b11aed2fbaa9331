"""Every public name and every parameter is documented, so the docs cannot drift from the code.

The lists come from the code itself (``aioparallel.__all__``, the signatures of
``Parallel.__init__`` and ``parallel_config.__init__``), so a name or parameter added later
is checked too. The API page (docs/api.md) renders docstrings with mkdocstrings, which shows
a parameter's description only when the numpy-style ``Parameters`` section lists it: that is
what is checked, not a mere mention of the word somewhere.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path
from typing import Any

import pytest

import aioparallel
from aioparallel import Parallel, parallel_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
API_PAGE = DOCS / "api.md"
_DIRECTIVE = re.compile(r"^::: aioparallel\.(\w+)\s*$", re.MULTILINE)


def api_entries() -> set[str]:
    """Names with a ``::: aioparallel.Name`` entry on the API page."""
    return set(_DIRECTIVE.findall(API_PAGE.read_text(encoding="utf-8")))


def prose() -> str:
    """Every docs page, without the mkdocstrings directives."""
    return "\n".join(
        _DIRECTIVE.sub("", page.read_text(encoding="utf-8")) for page in sorted(DOCS.glob("*.md"))
    )


def numpy_section(doc: str, title: str) -> list[str]:
    """The entry names of a numpy-style docstring section (``Parameters``, ``Attributes``)."""
    lines = inspect.cleandoc(doc).splitlines()
    names: list[str] = []
    for i, line in enumerate(lines[:-1]):
        if line.strip() == title and set(lines[i + 1].strip()) == {"-"}:
            for entry in lines[i + 2 :]:
                if entry and not entry.startswith(" "):  # an entry, or the next section
                    if i + 3 < len(lines) and set(entry.strip()) == {"-"}:
                        break
                    names.append(entry.split(":")[0].strip().lstrip("*"))
            break
    # the line before a dashes line is the next section's title, not an entry
    titles = {lines[j - 1].strip() for j in range(1, len(lines)) if set(lines[j].strip()) == {"-"}}
    return [n for n in names if n not in titles]


def parameters(func: Any) -> list[str]:
    return [name for name in inspect.signature(func).parameters if name != "self"]


@pytest.mark.parametrize("name", aioparallel.__all__)
def test_public_name_is_on_the_api_page(name: str) -> None:
    obj = getattr(aioparallel, name)
    alias = typing.get_origin(obj) is not None  # Callable[...] (a "class" to 3.10's inspect)
    if not alias and (inspect.isclass(obj) or inspect.isfunction(obj)):
        assert name in api_entries(), f"docs/api.md has no '::: aioparallel.{name}'"
        # mkdocstrings hides an object without a docstring (show_if_no_docstring: false);
        # a class's __doc__ is its own, never inherited
        assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
    else:  # a type alias: no runtime docstring, so the pages' prose must explain it
        assert f"`{name}`" in prose(), f"no docs page mentions `{name}`"


@pytest.mark.parametrize(
    ("owner", "init"),
    [(Parallel, Parallel.__init__), (parallel_config, parallel_config.__init__)],
    ids=["Parallel", "parallel_config"],
)
def test_every_parameter_is_documented(owner: type, init: Any) -> None:
    documented = numpy_section(owner.__doc__ or "", "Parameters")
    missing = [p for p in parameters(init) if p not in documented]
    assert missing == [], f"{owner.__name__}'s docstring does not describe {missing}"
    stale = [p for p in documented if p not in parameters(init)]
    assert stale == [], f"{owner.__name__}'s docstring describes parameters it lacks: {stale}"


def test_every_parallel_parameter_is_in_the_joblib_guide() -> None:
    """The migration guide walks through the parameters one by one."""
    guide = (DOCS / "joblib.md").read_text(encoding="utf-8")
    missing = [p for p in parameters(Parallel.__init__) if f"`{p}`" not in guide]
    assert missing == [], f"docs/joblib.md does not mention {missing}"


def test_backend_attributes_are_documented() -> None:
    documented = numpy_section(aioparallel.Backend.__doc__ or "", "Attributes")
    assert set(aioparallel.Backend.__annotations__) <= set(documented)


def test_numpy_section_parser() -> None:
    doc = """Summary.

    Parameters
    ----------
    a
        Text.
    b : int
        More text.
    **rest
        Any.

    Returns
    -------
    int
    """
    assert numpy_section(doc, "Parameters") == ["a", "b", "rest"]
    assert numpy_section(doc, "Attributes") == []


def test_no_line_numbers_cited() -> None:
    """Docs cite our code by name: its line numbers go stale with the next edit (a sample
    traceback shows ``line ...`` for our files; a user's own lines may stay)."""
    text = prose() + (DOCS.parent / "README.md").read_text(encoding="utf-8")
    cited = re.findall(r"(?:aioparallel/|_)\w+\.py\W{0,2} (?:line|l\.) ?\d+", text)
    assert cited == []


def test_signatures_show_plain_defaults() -> None:
    """``help(Parallel)`` and the API page show ``"2*n_jobs"``, not the internal ``Default``."""
    assert "Default(" not in str(inspect.signature(Parallel.__init__))
    import griffe

    extension = DOCS.parent / "docs_ext" / "plain_defaults.py"
    loaded = griffe.load(
        "aioparallel",
        search_paths=[str(DOCS.parent)],
        extensions=griffe.load_extensions(f"{extension}:PlainDefaults"),
    )
    shown = {p.name: str(p.default) for p in loaded["Parallel.__init__"].parameters}
    assert shown["pre_dispatch"] == '"2*n_jobs"'
    assert not [d for d in shown.values() if "Default(" in d]
