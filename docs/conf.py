"""Sphinx configuration (MyST Markdown)."""

project = "nous_twisted"
author = "nous_twisted developers"
copyright = "2026, nous_twisted developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
myst_heading_anchors = 3
