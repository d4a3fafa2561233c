"""Sphinx configuration (scverse cookiecutter style); the full site comes with the docs issue."""

project = "cellformer"
author = "The cellformer developers"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
napoleon_numpy_docstring = True
html_theme = "sphinx_book_theme"
nb_execution_mode = "off"
exclude_patterns = ["_build"]
