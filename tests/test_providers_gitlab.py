"""GitLab provider against a fake GitLab API v4 (URL-escaped project paths, tokens in headers)."""

from __future__ import annotations

import pytest

from binderapi import naming
from binderapi.errors import SpecError

SHA = "b" * 40


@pytest.fixture
def gitlab(fake_gitlab, make_registry):
    fake_gitlab.set_ref("gitlab-org/gitlab-foss", "HEAD", SHA)
    fake_gitlab.set_ref("group/sub/project", "feature/x", SHA)

    def registry(**options):
        return make_registry({"GitLabRepoProvider": {"hostname": "gitlab.example.org",
                                                     "api_base_url": fake_gitlab.url + "/api/v4", **options}})

    return registry


async def test_resolves_and_names_like_binderhub(gitlab, fake_gitlab):
    provider = gitlab().create("gl", "gitlab-org%2Fgitlab-foss/HEAD")
    assert await provider.get_resolved_ref() == SHA
    assert fake_gitlab.requests[0].path == "/api/v4/projects/gitlab-org%2Fgitlab-foss/repository/commits/HEAD"
    assert await provider.get_resolved_spec() == f"gitlab-org%2Fgitlab-foss/{SHA}"
    assert provider.get_repo_url() == "https://gitlab.example.org/gitlab-org/gitlab-foss.git"
    assert await provider.get_resolved_ref_url() == f"https://gitlab.example.org/gitlab-org/gitlab-foss/tree/{SHA}"
    assert provider.get_build_slug() == "gitlab_-org-gitlab_-foss"
    assert naming.image_name("r/", provider.get_build_slug(), SHA).startswith("r/gitlab-5f-2dorg-2dgitlab-5f-2dfoss-")


async def test_nested_groups_and_escaped_ref(gitlab, fake_gitlab):
    provider = gitlab().create("gl", "group%2Fsub%2Fproject/feature%2Fx")
    assert await provider.get_resolved_ref() == SHA
    assert fake_gitlab.requests[0].path == "/api/v4/projects/group%2Fsub%2Fproject/repository/commits/feature%2Fx"


async def test_unknown_project_or_ref_is_none(gitlab):
    registry = gitlab()
    assert await registry.create("gl", "gitlab-org%2Fnope/HEAD").get_resolved_ref() is None
    assert await registry.create("gl", "gitlab-org%2Fgitlab-foss/nope").get_resolved_ref() is None


async def test_private_token_in_header_and_credentials(gitlab, fake_gitlab):
    fake_gitlab.private["group/sub/project"] = "glpat-123"
    assert await gitlab().create("gl", "group%2Fsub%2Fproject/feature%2Fx").get_resolved_ref() is None
    provider = gitlab(private_token="glpat-123").create("gl", "group%2Fsub%2Fproject/feature%2Fx")
    assert await provider.get_resolved_ref() == SHA
    last = fake_gitlab.requests[-1]
    assert last.headers["private-token"] == "glpat-123" and "glpat" not in last.query
    assert provider.git_credentials == r"username=binderhub\npassword=glpat-123"


@pytest.mark.parametrize("spec", ["gitlab-org%2Fgitlab-foss", "gitlab-org%2Fgitlab-foss/", "project/HEAD"])
def test_malformed_specs(gitlab, spec):
    with pytest.raises(SpecError):
        gitlab().create("gl", spec)


@pytest.mark.parametrize("spec", [
    "group%2Fproject/..",  # one dot segment would drop "commits" from the path
    "group%2Fproject/..%2F..%2F..%2Fvictim%252Fprivate",
    "group%2Fproject/%252e%252e",
    "group%2Fproject/a%5Cb",
    "group%2Fproject/HEAD%3Fx",
    "group%2F..%2Fproject/HEAD",
    "group%2Fpro%2525ject/HEAD",
    "group%2F.hidden/HEAD",
])
async def test_api_path_is_confined(gitlab, fake_gitlab, spec):
    with pytest.raises(SpecError):
        await gitlab(private_token="glpat-123").create("gl", spec).get_resolved_ref()
    assert fake_gitlab.requests == []


async def test_sha_on_an_unknown_project_asks_gitlab(gitlab, fake_gitlab):
    registry = gitlab()
    for _ in range(2):
        assert await registry.create("gl", f"nobody%2Fnothing/{SHA}").get_resolved_ref() is None
    assert [r.path for r in fake_gitlab.requests] == [f"/api/v4/projects/nobody%2Fnothing/repository/commits/{SHA}"]
