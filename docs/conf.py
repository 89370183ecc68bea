"""Sphinx configuration: the docs site, built from docs/*.md and the package's docstrings.

`make docs` (and `make test`) build it with warnings as errors. The check at the end makes
a public name without an entry in the API reference a warning, so the build fails too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ducto  # noqa: E402
import ducto.embedded  # noqa: E402
import ducto.interface  # noqa: E402

project = "ducto"
copyright = "2026, The ducto authors"
release = ducto.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = f"ducto {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

logger = logging.getLogger(__name__)

#: The modules whose ``__all__`` is the public API; each name needs a reference entry.
PUBLIC_MODULES = (ducto, ducto.interface, ducto.embedded)


def check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about every public name that the API reference does not describe."""
    documented = {name.rsplit(".", 1)[-1] for name in env.domains["py"].objects}
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            if not name.startswith("_") and name not in documented:
                logger.warning(
                    "%s.%s is public but not in the API reference", module.__name__, name
                )


def setup(app: Sphinx) -> None:
    app.connect("env-check-consistency", check_public_names)
