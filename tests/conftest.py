"""Test configuration. Fixture modules live in tests/fixtures/ (one place for everything that starts
infrastructure); each is loaded as a pytest plugin, named here so a fixture's origin is one grep
away. A new fixture module is added to this list.

``fixtures.server`` comes first: the others import from it, and pytest can rewrite the asserts of
a plugin module only if it imports that module itself, before anyone else does.
"""

pytest_plugins = [
    "fixtures.server",  # serve(), make_settings(), read_events(), free_port(), client
    "fixtures.markers",  # the docker, hub and postgres markers, enforced
    "fixtures.stack",  # the Docker backend: docker_settings(), no_leaked_build_containers
    "fixtures.engineproxy",  # engine_proxy: an engine a test can cut
    "fixtures.registries",  # real registries: open_registry, basic_registry, token_registry, ...
    "fixtures.gitserver",  # git_server: git daemon and smart HTTP
    "fixtures.hub",  # jupyterhub: JupyterHub with DockerSpawner
    "fixtures.kubeapi",  # the Kubernetes API test server: kube_api, kubeconfig, kube_settings()
    "fixtures.upstreams",  # fake GitHub/GitLab/Zenodo/... APIs, make_registry
    "fixtures.store",  # store_url (a fresh database per test: SQLite, PostgreSQL), store
    "fixtures.postgres",  # PostgreSQL from scripts/infra.sh: postgres_dsn, postgres_url, postgres_database
]
