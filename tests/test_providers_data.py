"""DOI and dataset providers (Zenodo, Figshare, HydroShare, Dataverse, CKAN) against fakes of the DOI
resolver and each repository's API."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from binderapi import naming
from binderapi.errors import SpecError, UpstreamError
from binderapi.providers._net import DeniedNetworkError


@pytest.fixture
def doi_registry(fake_doi, make_registry):
    def registry(config=None):
        base = {"DoiProvider": {"doi_resolver_url": fake_doi.url}}
        for section, options in (config or {}).items():
            base.setdefault(section, {}).update(options)
        return make_registry(base)

    return registry


# -- Zenodo -----------------------------------------------------------------------------------


@pytest.fixture
def zenodo(fake_doi, fake_zenodo, doi_registry):
    fake_zenodo.records.update({"3242074", "3242075"})
    fake_doi.dois["10.5281/zenodo.3242074"] = f"{fake_zenodo.url}/record/3242074"  # legacy URL: 2 hops
    fake_doi.dois["10.5281/zenodo.3242073"] = f"{fake_zenodo.url}/records/3242075"  # concept DOI -> latest
    return lambda: doi_registry({"ZenodoProvider": {"hosts": ["127.0.0.1"]}})


async def test_zenodo_version_doi(zenodo, fake_doi, fake_zenodo):
    provider = zenodo().create("zenodo", "10.5281/zenodo.3242074")
    assert await provider.get_resolved_ref() == "3242074"
    assert await provider.get_resolved_spec() == "10.5281/zenodo.3242074"
    assert provider.get_repo_url() == "10.5281/zenodo.3242074"
    assert await provider.get_resolved_ref_url() == f"{fake_doi.url}/10.5281/zenodo.3242074"
    # the landing host and the DOI name the image (BinderHub: "zenodo-3242074", see test_providers_identity)
    assert provider.get_build_slug() == "zenodo-127.0.0.1/10.5281/zenodo.3242074"
    assert naming.image_name("", provider.get_build_slug(), "3242074").startswith("zenodo-2d127-2e0-2e0-2e1-2f10-2e5281-2fzenodo-2e3242074-")
    assert [r.path for r in fake_zenodo.requests] == ["/record/3242074", "/records/3242074"]


async def test_zenodo_concept_doi_resolves_to_latest(zenodo):
    provider = zenodo().create("zenodo", "10.5281/zenodo.3242073")
    assert await provider.get_resolved_ref() == "3242075"
    assert await provider.get_resolved_spec() == "10.5281/zenodo.3242075"


async def test_zenodo_version_doi_cached_for_good(fake_doi, fake_zenodo, doi_registry):
    fake_zenodo.records.add("3242074")
    fake_doi.dois["10.5281/zenodo.3242074"] = f"{fake_zenodo.url}/records/3242074"
    registry = doi_registry({"ZenodoProvider": {"hosts": ["127.0.0.1"], "cache_ttl": 0}})
    for _ in range(3):
        assert await registry.create("zenodo", "10.5281/zenodo.3242074").get_resolved_ref() == "3242074"
    assert fake_doi.count() == 1


async def test_zenodo_unknown_doi_is_none(zenodo):
    assert await zenodo().create("zenodo", "10.5281/zenodo.999").get_resolved_ref() is None


async def test_zenodo_doi_landing_elsewhere_is_refused(fake_doi, fake_zenodo, doi_registry):
    fake_doi.dois["10.5281/zenodo.1"] = f"{fake_zenodo.url}/records/1"
    fake_zenodo.records.add("1")
    with pytest.raises(SpecError, match="is not a Zenodo DOI"):
        await doi_registry().create("zenodo", "10.5281/zenodo.1").get_resolved_ref()


async def test_redirect_into_denied_network_is_refused(fake_doi, fake_zenodo, doi_registry):
    # the resolver itself is allowed; the hop it redirects to is not
    fake_doi.dois["10.5281/zenodo.7"] = "http://169.254.169.254/latest/meta-data"
    with pytest.raises(DeniedNetworkError):
        await doi_registry({"ZenodoProvider": {"hosts": ["169.254.169.254"]}}).create("zenodo", "10.5281/zenodo.7").get_resolved_ref()
    assert fake_doi.count() == 1


def test_not_a_doi(doi_registry):
    with pytest.raises(SpecError, match="is not a DOI"):
        doi_registry().create("zenodo", "zenodo.3242074")


# -- Figshare ---------------------------------------------------------------------------------


@pytest.fixture
def figshare(fake_doi, fake_figshare, doi_registry):
    fake_figshare.articles["9782777"] = [1, 2, 3]
    fake_doi.dois["10.6084/m9.figshare.9782777.v1"] = f"{fake_figshare.url}/articles/code/Binder-ready/9782777/1"
    fake_doi.dois["10.6084/m9.figshare.9782777"] = f"{fake_figshare.url}/articles/code/Binder-ready/9782777"
    return lambda: doi_registry({"FigshareProvider": {"api_base_url": fake_figshare.url + "/v2", "hosts": ["127.0.0.1"]}})


async def test_figshare_versioned_doi(figshare, fake_figshare):
    provider = figshare().create("figshare", "10.6084/m9.figshare.9782777.v1")
    assert await provider.get_resolved_ref() == "9782777.v1"
    assert await provider.get_resolved_spec() == "10.6084/m9.figshare.9782777.v1"
    assert provider.get_build_slug() == "figshare-127.0.0.1/10.6084/m9.figshare.9782777.v1"
    assert fake_figshare.count("/v2/") == 0  # the version was in the DOI


async def test_figshare_unversioned_doi_takes_latest(figshare, fake_doi):
    provider = figshare().create("figshare", "10.6084/m9.figshare.9782777")
    assert await provider.get_resolved_ref() == "9782777.v3"
    assert await provider.get_resolved_spec() == "10.6084/m9.figshare.9782777.v3"
    assert await provider.get_resolved_ref_url() == f"{fake_doi.url}/10.6084/m9.figshare.9782777.v3"
    assert provider.get_repo_url() == "10.6084/m9.figshare.9782777.v3"  # given the bare DOI, repo2docker builds v1


async def test_figshare_unknown(figshare):
    assert await figshare().create("figshare", "10.6084/m9.figshare.1234").get_resolved_ref() is None


def test_figshare_spec_must_name_an_article(doi_registry):
    with pytest.raises(SpecError, match="not a Figshare DOI"):
        doi_registry().create("figshare", "10.6084/something-else")


# -- HydroShare -------------------------------------------------------------------------------

RESOURCE = "b8f6eae9d89241cf8b5904033460af61"


@pytest.fixture
def hydroshare(fake_hydroshare, make_registry):
    fake_hydroshare.resources[RESOURCE] = "2019-10-24T19:39:53.208532Z"
    return lambda: make_registry({"HydroshareProvider": {"base_url": fake_hydroshare.url}})


@pytest.mark.parametrize("spec", [RESOURCE, f"10.4211/hs.{RESOURCE}",
                                  quote(f"https://www.hydroshare.org/resource/{RESOURCE}", safe="")])
async def test_hydroshare(hydroshare, fake_hydroshare, spec):
    provider = hydroshare().create("hydroshare", spec)
    assert await provider.get_resolved_ref() == f"{RESOURCE}.v1571945993"
    assert provider.get_repo_url() == f"{fake_hydroshare.url}/resource/{RESOURCE}"
    assert await provider.get_resolved_spec() == provider.get_repo_url()
    assert await provider.get_resolved_ref_url() == provider.get_repo_url()
    assert provider.get_build_slug() == f"hydroshare-{RESOURCE}.v1571945993"


async def test_hydroshare_unknown_and_malformed(hydroshare):
    assert await hydroshare().create("hydroshare", "a" * 32).get_resolved_ref() is None
    with pytest.raises(SpecError, match="Hydroshare resource id was not recognized"):
        hydroshare().create("hydroshare", "not-a-resource")


# -- Dataverse --------------------------------------------------------------------------------


@pytest.fixture
def dataverse(fake_doi, fake_dataverse, doi_registry):
    fake_dataverse.add_dataset("10.7910/DVN/TJCLKP", 3035124, 3, 0)
    fake_doi.dois["10.7910/DVN/TJCLKP"] = f"{fake_dataverse.url}/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP"
    return doi_registry


async def test_dataverse(dataverse, fake_dataverse):
    provider = dataverse().create("dataverse", "10.7910/DVN/TJCLKP")
    assert await provider.get_resolved_ref() == "3035124.v3.0"
    assert await provider.get_resolved_spec() == "10.7910/DVN/TJCLKP"
    assert await provider.get_resolved_ref_url() == "https://doi.org/10.7910/DVN/TJCLKP"
    assert provider.get_repo_url() == "10.7910/DVN/TJCLKP"
    assert provider.get_build_slug() == "dataverse-127.0.0.1/10.7910/dvn/tjclkp"
    api = [r for r in fake_dataverse.requests if r.path.startswith("/api/")]
    assert api[0].path == "/api/datasets/:persistentId" and "persistentId=doi:10.7910/DVN/TJCLKP" in api[0].query


async def test_dataverse_unknown(dataverse, fake_doi, fake_dataverse):
    fake_doi.dois["10.7910/DVN/NOPE"] = f"{fake_dataverse.url}/dataset.xhtml?persistentId=doi:10.7910/DVN/NOPE"
    assert await dataverse().create("dataverse", "10.7910/DVN/NOPE").get_resolved_ref() is None
    assert await dataverse().create("dataverse", "10.7910/DVN/UNREGISTERED").get_resolved_ref() is None


async def test_dataverse_failing_api_is_an_upstream_error(dataverse, fake_dataverse):
    fake_dataverse.faults = [200, 500, 500, 500]  # the landing page works, then the API fails
    with pytest.raises(UpstreamError, match="Dataverse .* is unreachable or failing"):
        await dataverse().create("dataverse", "10.7910/DVN/TJCLKP").get_resolved_ref()


# -- CKAN -------------------------------------------------------------------------------------


@pytest.fixture
def ckan(fake_ckan, make_registry):
    fake_ckan.packages["sample-dataset-1"] = "2021-06-30T13:20:02.654396"
    fake_ckan.activities["act-1"] = ("sample-dataset-1", "2020-01-01T00:00:00.000000")
    return make_registry


async def test_ckan_dataset(ckan, fake_ckan):
    url = f"{fake_ckan.url}/dataset/sample-dataset-1"
    provider = ckan().create("ckan", quote(url, safe=""))
    assert await provider.get_resolved_ref() == "sample-dataset-1.v1625059202"
    assert provider.get_repo_url() == url
    assert await provider.get_resolved_spec() == url
    assert await provider.get_resolved_ref_url() == url
    assert provider.get_build_slug() == f"ckan-{url}"
    assert fake_ckan.requests[0].path == "/api/3/action/package_show"
    assert fake_ckan.requests[0].query == "id=sample-dataset-1"


@pytest.mark.parametrize("suffix", ["/dataset/sample-dataset-1/history/act-1", "/dataset/sample-dataset-1?activity_id=act-1"])
@pytest.mark.parametrize("prefix", ["", "/catalog"])
async def test_ckan_activity_pins_a_version(ckan, fake_ckan, prefix, suffix):
    provider = ckan({"CKANProvider": {"cache_ttl": 0}}).create("ckan", quote(fake_ckan.url + prefix + suffix, safe=""))
    assert await provider.get_resolved_ref() == "sample-dataset-1.v1577836800"
    assert await provider.get_resolved_ref() == "sample-dataset-1.v1577836800"
    assert fake_ckan.requests[0].path == f"{prefix}/api/3/action/activity_data_show"
    assert fake_ckan.requests[0].query == "id=act-1&object_type=package"


async def test_ckan_unknown_dataset(ckan, fake_ckan):
    assert await ckan().create("ckan", quote(f"{fake_ckan.url}/dataset/nope", safe="")).get_resolved_ref() is None


@pytest.mark.parametrize("url, message", [
    ("https://demo.ckan.org/group/x", 'no "/dataset/"'),
    ("file:///dataset/x", "not a CKAN dataset URL"),
])
def test_ckan_malformed(ckan, url, message):
    with pytest.raises(SpecError, match=message):
        ckan().create("ckan", quote(url, safe=""))


async def test_ckan_deny_list_applies_to_user_urls(ckan, fake_ckan):
    registry = ckan({"RepoProvider": {"denied_networks": ["127.0.0.0/8"]}})
    with pytest.raises(DeniedNetworkError):
        await registry.create("ckan", quote(f"{fake_ckan.url}/dataset/sample-dataset-1", safe="")).get_resolved_ref()
    assert fake_ckan.count() == 0
