"""The web dashboard: an ASGI app, its page, script and styles (shipped with the package, no
CDN), and the state diagram drawn from a workflow's definition."""

from orchestrator.web.app import check_binding, create_app, is_local

__all__ = ["check_binding", "create_app", "is_local"]
