"""Sphinx configuration: MyST Markdown pages, an API reference generated from the docstrings.

The API reference (api.md) is filled in at build time from each public module's
``__all__`` (or, without one, its public names), so a name added to
``nous_twisted.__all__`` appears in the reference with no edit here; the build
fails (with -W) when a public name has no docstring or did not make it into
the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "nous_twisted"
author = "nous_twisted developers"
copyright = "2026, nous_twisted developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
source_suffix = {".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build", "_inventories"]
html_theme = "alabaster"
myst_heading_anchors = 3

# -- API reference -----------------------------------------------------------

# The modules whose public names are documented; one missing from this
# checkout (an optional module another branch adds) is left out of the page.
PUBLIC_MODULES = ["nous_twisted", "nous_twisted.testing", "nous_twisted.scrapy"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
# zope interfaces and frozen dataclasses are documented by their docstrings.
autodoc_inherit_docstrings = False
# Twisted's and the standard library's names link to their docs.  The files in
# _inventories/ (python docs/_inventories/build.py) are the offline fallback,
# so the build passes without network access.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", (None, "_inventories/python.inv")),
    "twisted": ("https://docs.twisted.org/en/stable/api", (None, "_inventories/twisted.inv")),
}
intersphinx_timeout = 5


def public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
            and (inspect.isclass(v) or inspect.isfunction(v))
        ]
    return list(names)


def present_modules() -> list[str]:
    out = []
    for name in PUBLIC_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append(name)
    return out


def kind_of(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if type(obj).__name__ == "InterfaceClass":  # zope.interface
        return "interface"
    if callable(obj):
        return "function"
    return "data"


SECTIONS = [("function", "Functions"), ("class", "Classes"), ("interface", "Interfaces"),
            ("exception", "Errors"), ("data", "Values")]


def reference(modname: str) -> str:
    module = importlib.import_module(modname)
    by_kind: dict[str, list[str]] = {}
    for name in public_names(module):
        by_kind.setdefault(kind_of(getattr(module, name)), []).append(name)
    out = [f"## `{modname}`\n", "```{eval-rst}", f".. automodule:: {modname}", "   :no-members:", "```\n"]
    for kind, title in SECTIONS:
        names = by_kind.get(kind, [])
        if not names:
            continue
        out.append(f"### {title}\n")
        out.append("```{eval-rst}")
        out.append(f".. currentmodule:: {modname}\n")
        for name in sorted(names, key=lambda n: (n.lower(), n)) if kind == "exception" else names:
            if kind == "interface":
                out.append(interface_rst(getattr(module, name), name))
                continue
            directive = {"function": "autofunction", "class": "autoclass", "interface": "autoclass",
                         "exception": "autoexception", "data": "autodata"}[kind]
            out.append(f".. {directive}:: {name}")
            if kind == "class":
                out.append("   :members:")
                out.append("   :undoc-members:")
                out.append("   :special-members: __aiter__, __anext__, __aenter__, __aexit__")
            elif kind == "exception":
                out.append("   :members:")
            out.append("")
        out.append("```\n")
    return "\n".join(out)


def interface_rst(iface: Any, name: str) -> str:
    """A zope.interface as a class with its methods and attributes (autodoc sees neither)."""
    import textwrap

    from zope.interface.interface import Method

    def doc(text: str, indent: str) -> str:
        return textwrap.indent(inspect.cleandoc(text or ""), indent)

    bases = ", ".join(f":class:`{b.__module__}.{b.__name__}`" for b in iface.__bases__)
    out = [f".. class:: {name}", "", f"   An interface (``zope.interface``); bases: {bases}.", "", doc(iface.getDoc(), "   "), ""]
    for member in iface.names():  # its own, in definition order
        desc = iface[member]
        if isinstance(desc, Method):
            out += [f"   .. method:: {member}{desc.getSignatureString()}", "", doc(desc.getDoc(), "      "), ""]
        else:
            out += [f"   .. attribute:: {member}", "", doc(desc.getDoc(), "      "), ""]
    return "\n".join(out)


API_MARKER = "<!-- api-reference: generated by docs/conf.py -->"


def fill_api_page(app: Any, docname: str, source: list[str]) -> None:
    if API_MARKER in source[0]:
        source[0] = source[0].replace(API_MARKER, "\n".join(reference(m) for m in present_modules()))


def check_documented(app: Any, env: Any) -> None:
    """Every public name has its own docstring and an entry in the reference."""
    from sphinx.util import logging

    log = logging.getLogger("nous_twisted.docs")
    objects = env.get_domain("py").objects
    for modname in present_modules():
        module = importlib.import_module(modname)
        for name in public_names(module):
            obj = getattr(module, name)
            own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
            if kind_of(obj) == "interface":
                own = obj.getDoc()
            if not (own or "").strip():
                log.warning(f"{modname}.{name} is public (in __all__) and has no docstring")
            if f"{modname}.{name}" not in objects:
                log.warning(f"{modname}.{name} is public and missing from the API reference")


def setup(app: Any) -> None:
    app.connect("source-read", fill_api_page)
    app.connect("env-updated", check_documented)
