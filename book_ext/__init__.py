"""Sphinx extensions of the book itself (not used by the notebooks; see _config.yml).

A package installed by ``pip install -e .`` (pyproject.toml), so that ``jupyter-book build`` finds
it whichever folder the configuration file is copied to (``make html-stored`` builds from a copy).
"""
