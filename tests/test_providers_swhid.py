"""Software Heritage provider against a fake of the archive's Web API."""

from __future__ import annotations

import pytest

from binderapi.errors import SpecError, UpstreamRateLimitError

REV, DIR, REL, SNP, REV2 = ("1" * 40, "2" * 40, "3" * 40, "4" * 40, "5" * 40)


@pytest.fixture
def swh(fake_swh, make_registry):
    fake_swh.revisions[REV] = DIR
    fake_swh.revisions[REV2] = DIR
    fake_swh.directories.add(DIR)
    fake_swh.releases[REL] = ("revision", REV)
    fake_swh.snapshots[SNP] = {
        "HEAD": {"target": "refs/heads/main", "target_type": "alias"},
        "refs/heads/dev": {"target": REV, "target_type": "revision"},
        "refs/heads/main": {"target": REV2, "target_type": "revision"},
    }
    return lambda **options: make_registry({"SwhidProvider": {"api_base_url": fake_swh.url + "/api/1", **options}})


@pytest.mark.parametrize("spec, kind, target", [
    (f"swh:1:rev:{REV}", "rev", REV),
    (f"swh:1:dir:{DIR}", "dir", DIR),
    (f"swh:1:rel:{REL}", "rev", REV),
    (f"swh:1:snp:{SNP}", "rev", REV2),
    (f"swh:1:rev:{REV};origin=https://github.com/o/r;visit=swh:1:snp:{SNP}", "rev", REV),
])
async def test_resolves(swh, fake_swh, spec, kind, target):
    provider = swh().create("swhid", spec)
    assert await provider.get_resolved_ref() == target
    assert provider.get_repo_url() == f"swh:1:{kind}:{target}"
    assert await provider.get_resolved_spec() == f"swh:1:{kind}:{target}"
    assert await provider.get_resolved_ref_url() == f"{fake_swh.url}/swh:1:{kind}:{target}"
    assert provider.get_build_slug() == f"swh-{kind}-{target}"


async def test_snapshot_head_on_a_later_page(swh, fake_swh):
    fake_swh.page_size = 1  # the first page holds only "HEAD"
    provider = swh().create("swhid", f"swh:1:snp:{SNP}")
    assert await provider.get_resolved_ref() == REV2
    assert any("branches_from=refs%2Fheads%2Fmain" in r.query for r in fake_swh.requests)


async def test_immutable_resolutions_are_cached_for_good(swh, fake_swh):
    registry = swh(cache_ttl=0)
    for _ in range(3):
        await registry.create("swhid", f"swh:1:rel:{REL}").get_resolved_ref()
    assert fake_swh.count() == 1


async def test_unknown_objects_are_none(swh):
    for kind in ("rev", "dir", "rel", "snp"):
        assert await swh().create("swhid", f"swh:1:{kind}:{'9' * 40}").get_resolved_ref() is None


async def test_token_and_rate_limit(swh, fake_swh):
    fake_swh.faults = [429]
    with pytest.raises(UpstreamRateLimitError, match="Software Heritage rate limit exceeded"):
        await swh(access_token="swh-token").create("swhid", f"swh:1:rev:{REV}").get_resolved_ref()
    assert fake_swh.requests[0].headers["authorization"] == "Bearer swh-token"


@pytest.mark.parametrize("spec, message", [
    ("swh:1:cnt:" + "a" * 40, "a single file"),
    ("swh:1:ori:" + "a" * 40, "an origin"),
    ("swh:1:rev:abc", "not a Software Heritage identifier"),
    ("swh:2:rev:" + "a" * 40, "not a Software Heritage identifier"),
])
def test_unbuildable_or_malformed(swh, spec, message):
    with pytest.raises(SpecError, match=message):
        swh().create("swhid", spec)


async def test_release_of_unbuildable_target(swh, fake_swh):
    fake_swh.releases[REL] = ("content", "6" * 40)
    with pytest.raises(SpecError, match="cannot be built"):
        await swh().create("swhid", f"swh:1:rel:{REL}").get_resolved_ref()


@pytest.mark.parametrize("spec", [
    f"swh:1:rev:{REV}/../../snapshot/{SNP}",
    f"swh:1:rev:{REV[:-1]}%2e",
    f"swh:1:rev:../../{REV[:34]}",
])
def test_id_cannot_move_the_api_path(swh, fake_swh, spec):
    """Issue #10 item 7, audited: only a 40-hex id reaches the API path."""
    with pytest.raises(SpecError, match="is not a Software Heritage identifier"):
        swh().create("swhid", spec)
    assert fake_swh.requests == []


async def test_qualifiers_never_reach_the_api(swh, fake_swh):
    provider = swh().create("swhid", f"swh:1:rev:{REV};origin=../../../snapshot/{SNP}?x#y")
    assert await provider.get_resolved_ref() == REV
    assert [r.path for r in fake_swh.requests] == [f"/api/1/revision/{REV}/"]
