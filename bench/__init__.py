"""binderapi's benchmark suite (issue 7): run with ``scripts/bench`` or ``python -m bench``.

Every workload talks to a running stack over HTTP on 127.0.0.1, exactly as clients do: by default
the suite starts one the way ``scripts/demo.py`` does (JupyterHub + DockerSpawner, git daemon,
binderapi as its own process), or it connects to URLs given on the command line. Results are a
table per workload on stderr and one JSON object per figure (``--json``). docs/performance.md has
the figures and how they were measured.
"""
