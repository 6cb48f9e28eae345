"""binderapi: BinderHub's API-only core as an async FastAPI service.

Kept import-light on purpose: the JupyterHub side (``binderapi.spawner``) imports this package
inside the hub's process, where FastAPI and friends need not be installed.
"""

__version__ = "0.1.0"
