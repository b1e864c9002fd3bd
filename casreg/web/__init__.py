"""``casreg ui``: a read-only web page over :class:`casreg.Registry` (docs/ui.md).

Needs the ``ui`` extra (``pip install 'casreg[ui]'``: Starlette, Jinja2, uvicorn).
"""

from __future__ import annotations

from casreg.web.app import CSP, create_app

__all__ = ["create_app", "CSP"]
