"""Kept for old imports: the app now lives in ``ui/app.py`` (builder) and the ``tab_*`` modules."""
from .app import build_demo, launch  # noqa: F401
