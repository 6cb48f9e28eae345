# Site configuration for repo2docker inside the builder image.
c = get_config()  # noqa: F821

# The engine runs without a bridge network (dockerd --bridge=none): RUN steps reach the package
# registries only with host networking.
c.Repo2Docker.extra_build_kwargs = {"network_mode": "host"}

# Mercurial is not installed; without this, every URL would first be probed with `hg`.
from repo2docker import contentproviders  # noqa: E402

c.Repo2Docker.content_providers = [
    cp
    for cp in (
        contentproviders.Local,
        contentproviders.Zenodo,
        contentproviders.Figshare,
        contentproviders.Dataverse,
        contentproviders.Hydroshare,
        getattr(contentproviders, "Swhid", None),
        getattr(contentproviders, "CKAN", None),
        contentproviders.Git,
    )
    if cp is not None
]
