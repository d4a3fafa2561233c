"""Sphinx configuration (scverse cookiecutter style): myst-nb, autosummary, book theme."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import cellformer

HERE = Path(__file__).parent
ROOT = HERE.parent

# the tutorials live in ../tutorials (MyST notebooks, one source of truth); Sphinx only reads
# files under docs/, so they are copied in at every build (docs/tutorials is git-ignored)
shutil.copytree(ROOT / "tutorials", HERE / "tutorials", dirs_exist_ok=True)

# the notebook kernels inherit this environment. The tutorials train small models, whose tiny
# tensor operations gain nothing from several threads, and in a Jupyter kernel on a 2-core
# machine OpenMP threads fight the kernel's own threads: a LinearClassifier fit on 700 cells
# took 87 s with 2 threads and 6.4 s with 1 (the whole build: 20 min → a few)
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

project = "cellformer"
author = "The cellformer developers"
copyright = f"{date.today().year}, {author}"
version = release = cellformer.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
    "sphinx_copybutton",
]

# .rst first: autosummary writes its stub pages (reST) with the first suffix; under .md they were
# read as Markdown and the API pages came out empty
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
# model cards (README.md) of models the tutorials save are outputs, not pages
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "jupyter_execute",
    "tutorials/*/README.md",
]
templates_path = ["_templates"]

# API reference from numpy docstrings
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports = ["tiledbsoma", "cellxgene_census"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
# every cross-reference must resolve (a broken one is a warning, and warnings fail the build)
nitpicky = True
nitpick_ignore = [
    # type variables and typing forms that Sphinx cannot link
    ("py:class", "optional"),
    ("py:class", "default"),
]
nitpick_ignore_regex = [
    # private classes that appear in public signatures (base classes, mixins)
    ("py:class", r"cellformer\..*\._.*"),
]

# links into the documentation of the packages cellformer builds on
intersphinx_mapping = {
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "sklearn": ("https://scikit-learn.org/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "python": ("https://docs.python.org/3", None),
}
if os.environ.get("CELLFORMER_DOCS_OFFLINE"):
    # a build machine without internet (the project's CI) cannot fetch the inventories: no
    # external links, and references into those packages are not checked there (they are on
    # Read the Docs and in the GitHub docs workflow)
    intersphinx_mapping = {}
    nitpick_ignore_regex += [
        ("py:.*", rf"{package}(\..*)?")
        for package in (
            "anndata", "scanpy", "scvi", "torch", "lightning", "numpy", "np", "pandas", "pd",
            "scipy", "sklearn", "matplotlib", "mudata", "ad", "rich", "pooch", "nn",
            "typing", "collections", "pathlib", "Path", "os", "Ellipsis",
        )
    ]  # fmt: skip

# copy buttons leave out prompts and outputs
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# notebooks run at build time, offline, on the embedded data
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_merge_streams = True
nb_execution_show_tb = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

html_theme = "sphinx_book_theme"
html_title = "cellformer"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "repository_url": "https://github.com/cellformer/cellformer",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}

# warnings from third-party code that a docs build cannot fix
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]


def _no_inline_attribute_types(app, what, name, obj, options, lines):
    """Keep napoleon from reading an attribute's first words before a colon as its type.

    ``#: Most training cells ... (float32: 4 bytes each)`` would otherwise become a type named
    "Most training cells ... (float32": the first line's colons become dashes.
    """
    if what in ("attribute", "data", "property") and lines:
        lines[0] = lines[0].replace(": ", " — ")


def setup(app):
    """Run the attribute fix before napoleon (priority 500) reads the docstrings."""
    app.connect("autodoc-process-docstring", _no_inline_attribute_types, priority=100)
