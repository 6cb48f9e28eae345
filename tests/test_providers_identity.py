"""Image names identify their source (issue #10 item 1): nobody can pre-build an image that another
spec will be served.

Each test plays the attack against fake upstreams speaking the real protocols: a second site, a DOI
under a foreign prefix, an upstream answering someone else's identifiers. The image and build names
are computed as the build pipeline computes them.

Providers whose ref is a content address keep BinderHub's names (audited, not changed here): ``gh``,
``gist``, ``gl`` and ``git`` tag images with the commit SHA the upstream resolved, and a commit SHA
fixes the tree (submodules and LFS objects included), so two repositories sharing a slug and a SHA
build the same content; ``git``'s slug is the full repository URL anyway. ``swhid`` names the
SWHID's object id. HydroShare's one host is the operator's ``base_url`` and its resource ids are
UUIDs the site assigns.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from binderapi import naming
from binderapi.errors import SpecError
from binderapi.providers._net import DeniedNetworkError
from fixtures.fakes import running
from fixtures.fakes.ckan import FakeCKAN

PREFIX = "registry.example/binder-"


async def names(provider) -> tuple[str, str]:
    """(image name, build name) of a resolved provider, as ``BuildPipeline.resolve`` makes them."""
    ref = await provider.get_resolved_ref()
    assert ref is not None
    slug = provider.get_build_slug()
    return naming.image_name(PREFIX, slug, ref), naming.build_name(slug, ref)


# -- CKAN -------------------------------------------------------------------------------------


async def test_ckan_same_dataset_name_on_another_site_gets_another_image(fake_ckan, make_registry):
    """The issue's reproduction: ``ckan/<host A>/dataset/x`` and ``ckan/<host B>/dataset/x``, the
    attacker's site B claiming the same ``metadata_modified``, got one image and one build name."""
    fake_ckan.packages["x"] = "2021-06-30T13:20:02.654396"
    registry = make_registry()
    async with running(FakeCKAN()) as attacker:
        attacker.packages["x"] = "2021-06-30T13:20:02.654396"
        victim = registry.create("ckan", quote(f"{fake_ckan.url}/dataset/x", safe=""))
        forged = registry.create("ckan", quote(f"{attacker.url}/dataset/x", safe=""))
        victim_names, forged_names = await names(victim), await names(forged)
    assert await victim.get_resolved_ref() == await forged.get_resolved_ref()  # same version claimed
    assert victim_names[0] != forged_names[0]
    assert victim_names[1] != forged_names[1]


async def test_ckan_name_covers_prefix_and_activity_but_not_noise(fake_ckan, make_registry):
    fake_ckan.packages["x"] = "2021-06-30T13:20:02.654396"
    fake_ckan.activities["a1"] = ("x", "2021-06-30T13:20:02.654396")
    registry = make_registry({"CKANProvider": {"cache_ttl": 0}})

    async def slug(path: str) -> str:
        provider = registry.create("ckan", quote(fake_ckan.url + path, safe=""))
        await provider.get_resolved_ref()
        return provider.get_build_slug()

    plain = await slug("/dataset/x")
    assert plain == f"ckan-{fake_ckan.url}/dataset/x"
    assert await slug("/catalog/dataset/x") != plain  # another CKAN under a prefix
    assert await slug("/dataset/x/history/a1") == await slug("/dataset/x?activity_id=a1") != plain
    assert await slug("/dataset/x?utm_source=mail#top") == plain


@pytest.mark.parametrize("url, message", [
    ("https://user:pw@demo.ckan.org/dataset/x", "Credentials do not belong"),
    ("https://demo.ckan.org/a/../dataset/x", '"." or ".."'),
    ("https://demo.ckan.org/dataset/x%2F..%2F..%2Fapi", "is not a dataset or activity id"),
    ("https://demo.ckan.org/dataset/x/history/..%5Cy", "is not a dataset or activity id"),
    ("https://demo.ckan.org/dataset/x?activity_id=a%26id%3Dother", "is not a dataset or activity id"),
])
def test_ckan_url_parts_are_strict(make_registry, url, message):
    with pytest.raises(SpecError, match=message):
        make_registry().create("ckan", quote(url, safe=""))


async def test_ckan_messages_say_the_once(fake_ckan, make_registry):
    """Was "The The CKAN site ..." (the upstream's name already had its article)."""
    registry = make_registry({"RepoProvider": {"denied_networks": ["127.0.0.0/8"]}})
    with pytest.raises(DeniedNetworkError) as info:
        await registry.create("ckan", quote(f"{fake_ckan.url}/dataset/x", safe="")).get_resolved_ref()
    assert str(info.value) == "The CKAN site 127.0.0.1 is on a network this service is not allowed to reach."


async def test_doi_resolver_messages_say_the_once(fake_doi, make_registry):
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url},
                              "RepoProvider": {"denied_networks": ["127.0.0.0/8"]}})
    with pytest.raises(DeniedNetworkError) as info:
        await registry.create("zenodo", "10.5281/zenodo.1").get_resolved_ref()
    assert str(info.value) == "The DOI resolver 127.0.0.1 is on a network this service is not allowed to reach."


# -- Figshare ---------------------------------------------------------------------------------


@pytest.fixture
def figshare(fake_doi, fake_figshare, make_registry):
    fake_figshare.articles["9782777"] = [1, 2, 3]
    fake_figshare.articles["1111"] = [1]

    def registry(**options):
        return make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url},
                              "FigshareProvider": {"api_base_url": fake_figshare.url + "/v2", **options}})

    return registry


async def test_figshare_doi_must_land_on_an_allowed_host(figshare, fake_doi, fake_figshare):
    """Like Zenodo's ``hosts``: by default only figshare.com, where repo2docker fetches from."""
    fake_doi.dois["10.6084/m9.figshare.9782777.v1"] = f"{fake_figshare.url}/articles/code/t/9782777/1"
    with pytest.raises(SpecError, match="is not a Figshare DOI: it resolves to 127.0.0.1, not to figshare.com"):
        await figshare().create("figshare", "10.6084/m9.figshare.9782777.v1").get_resolved_ref()
    assert await figshare(hosts=["127.0.0.1"]).create("figshare", "10.6084/m9.figshare.9782777.v1").get_resolved_ref() == "9782777.v1"


async def test_figshare_foreign_prefix_doi_gets_its_own_image(figshare, fake_doi, fake_figshare):
    """The issue's reproduction: a DOI under a foreign prefix, resolving to the same article id,
    was given the real article's image."""
    fake_doi.dois["10.6084/m9.figshare.9782777.v1"] = f"{fake_figshare.url}/articles/code/t/9782777/1"
    fake_doi.dois["10.9999/evil.figshare.9782777.v1"] = f"{fake_figshare.url}/articles/code/t/9782777/1"
    registry = figshare(hosts=["127.0.0.1"])
    real = await names(registry.create("figshare", "10.6084/m9.figshare.9782777.v1"))
    forged = await names(registry.create("figshare", "10.9999/evil.figshare.9782777.v1"))
    assert real[0].endswith(":9782777.v1") and forged[0].endswith(":9782777.v1")
    assert real[0] != forged[0] and real[1] != forged[1]


@pytest.mark.parametrize("doi, landing", [
    ("10.9999/evil.figshare.9782777.v1", "/articles/code/mine/1111/1"),  # another article
    ("10.6084/m9.figshare.9782777.v3", "/articles/code/t/9782777/1"),  # another version
    ("10.6084/m9.figshare.9782777.v1", "/articles/code/t/9782777"),  # no version: repo2docker takes v1
    ("10.6084/m9.figshare.9782777", "/v2/articles/9782777/versions"),  # not an article page
])
async def test_figshare_doi_must_land_on_the_article_it_names(figshare, fake_doi, fake_figshare, doi, landing):
    fake_doi.dois[doi] = fake_figshare.url + landing
    with pytest.raises(SpecError, match="does not resolve to Figshare article 9782777"):
        await figshare(hosts=["127.0.0.1"]).create("figshare", doi).get_resolved_ref()


# -- Zenodo and Dataverse ---------------------------------------------------------------------


async def test_zenodo_record_of_another_doi_or_host_gets_its_own_image(fake_doi, fake_zenodo, make_registry):
    """``zenodo-<record>`` was shared by every allowed host (sandbox.zenodo.org, where anyone may
    publish, numbers its records like zenodo.org) and by any DOI landing on that record number."""
    fake_zenodo.records.add("5")
    fake_doi.dois["10.5281/zenodo.5"] = f"{fake_zenodo.url}/records/5"
    fake_doi.dois["10.5072/zenodo.5"] = f"{fake_zenodo.url}/records/5"  # another registrant's DOI
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url},
                              "ZenodoProvider": {"hosts": ["127.0.0.1"]}})
    real = registry.create("zenodo", "10.5281/zenodo.5")
    other = registry.create("zenodo", "10.5072/zenodo.5")
    real_names, other_names = await names(real), await names(other)
    assert real_names[0] != other_names[0] and real_names[1] != other_names[1]
    assert real.get_build_slug() == "zenodo-127.0.0.1/10.5281/zenodo.5"  # the host is in the name
    # a DOI is case-insensitive: one name
    assert await names(registry.create("zenodo", "10.5281/ZENODO.5")) == real_names


async def test_zenodo_landing_must_name_a_record(fake_doi, fake_zenodo, make_registry):
    fake_zenodo.records.add("x:y")
    fake_doi.dois["10.5281/zenodo.9"] = f"{fake_zenodo.url}/records/x:y"
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url},
                              "ZenodoProvider": {"hosts": ["127.0.0.1"]}})
    with pytest.raises(SpecError, match="does not resolve to a Zenodo record"):
        await registry.create("zenodo", "10.5281/zenodo.9").get_resolved_ref()


async def test_dataverse_answer_naming_another_dataset_gets_its_own_image(fake_doi, fake_dataverse, make_registry):
    """``dataverse-<identifier>`` took the identifier from the landing site's answer, which any
    Dataverse (or anything speaking its API) a DOI lands on can choose."""
    fake_dataverse.add_dataset("10.7910/DVN/TJCLKP", 3035124, 3, 0)
    fake_dataverse.add_dataset("10.5555/DVN/TJCLKP", 3035124, 3, 0)  # same identifier, id and version
    for doi in ("10.7910/DVN/TJCLKP", "10.5555/DVN/TJCLKP"):
        fake_doi.dois[doi] = f"{fake_dataverse.url}/dataset.xhtml?persistentId=doi:{doi}"
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url}})
    real = await names(registry.create("dataverse", "10.7910/DVN/TJCLKP"))
    forged = await names(registry.create("dataverse", "10.5555/DVN/TJCLKP"))
    assert real[0] != forged[0] and real[1] != forged[1]


@pytest.mark.parametrize("doi", ["10.5281/../../evil", "10.5281/zenodo.1/..", "10.5281/./x", "10.5281//x"])
async def test_doi_cannot_move_the_resolver_path(fake_doi, make_registry, doi):
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url}})
    with pytest.raises(SpecError):
        await registry.create("zenodo", doi).get_resolved_ref()
    assert fake_doi.requests == []


async def test_doi_special_characters_stay_in_their_segment(fake_doi, make_registry):
    registry = make_registry({"DoiProvider": {"doi_resolver_url": fake_doi.url}})
    assert await registry.create("zenodo", "10.5281/a?b#c%2e\\d").get_resolved_ref() is None
    assert [r.path for r in fake_doi.requests] == ["/10.5281/a%3Fb%23c%252e%5Cd"]
