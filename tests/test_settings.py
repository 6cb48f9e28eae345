"""Settings: every BinderHub option, sources and their precedence, deprecations, validation."""

from __future__ import annotations

import json
import logging

import pytest

from binderapi.settings import ConfigError, load_settings
from binderapi.settings.dump import dump_settings, show_config_json
from binderapi.settings.models import SECTIONS

# Every option of BinderHub's application configuration reference, with its default.
BINDERHUB_OPTIONS = {
    "about_message": "", "appendix": "", "auth_enabled": False, "badge_base_url": "", "ban_networks": {},
    "ban_networks_min_prefix_len": 1, "banner_message": "", "base_url": "/", "build_class": "kubernetes",
    "build_cleaner_class": "kubernetes", "build_cleanup_interval": 60, "build_docker_config": {},
    "build_docker_host": "/var/run/docker.sock", "build_image": "", "build_max_age": 14400,
    "build_memory_limit": 0, "build_memory_request": 0, "build_namespace": "", "build_node_selector": {},
    "build_token_check_origin": True, "build_token_expires_seconds": 300, "build_token_secret": None,
    "builder_required": True, "concurrent_build_limit": 32, "config_file": "", "cors_allow_origin": "",
    "debug": False, "enable_api_only_mode": False, "executor_threads": 5, "extra_footer_scripts": {},
    "extra_static_path": "", "extra_static_url_prefix": "/extra_static/", "google_analytics_code": None,
    "google_analytics_domain": "auto", "health_handler_class": None, "hub_api_token": "", "hub_url": "",
    "hub_url_local": "", "image_prefix": "", "launch_quota_class": "kubernetes",
    "log_datefmt": "%Y-%m-%d %H:%M:%S", "log_format": "[%(name)s]%(highlevel)s %(message)s",
    "log_level": "WARNING", "log_tail_lines": 100, "logging_config": {}, "normalized_origin": "",
    "per_repo_quota": 0, "per_repo_quota_higher": 0, "pod_quota": None, "port": 8585,
    "push_secret": "binder-build-docker-config", "registry_class": "docker", "show_config": False,
    "show_config_json": False, "sticky_builds": False, "template_path": "", "template_variables": {},
    "tornado_settings": {}, "use_registry": True,
}

# BinderHub's deprecated options, a value for each, and where it must end up.
DEPRECATED = [
    ("appendix", "RUN echo hi", [("BuildExecutor", "appendix"), ("KubernetesBuildExecutor", "appendix"), ("DockerBuildExecutor", "appendix")]),
    ("build_docker_host", "/run/dind/docker.sock", [("KubernetesBuildExecutor", "docker_host"), ("DockerBuildExecutor", "docker_host")]),
    ("build_image", "example/r2d:1", [("KubernetesBuildExecutor", "build_image"), ("DockerBuildExecutor", "build_image")]),
    ("build_memory_limit", "2G", [("BuildExecutor", "memory_limit"), ("KubernetesBuildExecutor", "memory_limit")]),
    ("build_memory_request", "1G", [("KubernetesBuildExecutor", "memory_request")]),
    ("build_namespace", "builds", [("KubernetesBuildExecutor", "namespace")]),
    ("build_node_selector", {"pool": "build"}, [("KubernetesBuildExecutor", "node_selector")]),
    ("log_tail_lines", 7, [("KubernetesBuildExecutor", "log_tail_lines"), ("DockerBuildExecutor", "log_tail_lines")]),
    ("pod_quota", 12, [("LaunchQuota", "total_quota"), ("KubernetesLaunchQuota", "total_quota")]),
    ("push_secret", "my-push-secret", [("BuildExecutor", "push_secret"), ("KubernetesBuildExecutor", "push_secret")]),
    ("sticky_builds", True, [("KubernetesBuildExecutor", "sticky_builds")]),
    ("build_max_age", 600, [("KubernetesCleaner", "max_age"), ("DockerCleaner", "max_age")]),
]
EXPECTED_VALUE = {"2G": 2 * 1024**3, "1G": 1024**3}


def load(**kwargs):
    kwargs.setdefault("environ", {})
    kwargs.setdefault("dotenv_path", None)
    return load_settings(**kwargs)


def test_every_binderhub_option_has_its_default():
    dumped = dump_settings(load())["BinderHub"]
    for option, default in BINDERHUB_OPTIONS.items():
        assert option in dumped, option
        assert dumped[option] == default, (option, dumped[option], default)


def test_precedence_file_dotenv_env_cli(tmp_path):
    config = tmp_path / "binderhub.yaml"
    config.write_text("BinderHub:\n  port: 1001\n  image_prefix: from-file/\n  base_url: /file/\n  hub_url: http://file\n")
    dotenv = tmp_path / ".env"
    dotenv.write_text("BINDERAPI_BINDERHUB__PORT=1002\nBINDERAPI_BINDERHUB__IMAGE_PREFIX=from-dotenv/\nBINDERAPI_BINDERHUB__BASE_URL=/dotenv/\n")
    environ = {"BINDERAPI_BINDERHUB__PORT": "1003", "BINDERAPI_BINDERHUB__IMAGE_PREFIX": "from-env/"}
    settings = load(config_file=str(config), dotenv_path=dotenv, environ=environ, cli={"BinderHub": {"port": 1004}})
    hub = settings.BinderHub
    assert (hub.port, hub.image_prefix, hub.base_url, hub.hub_url) == (1004, "from-env/", "/dotenv/", "http://file/")
    settings = load(config_file=str(config), dotenv_path=dotenv, environ=environ)
    assert settings.BinderHub.port == 1003
    settings = load(config_file=str(config), dotenv_path=dotenv)
    assert settings.BinderHub.port == 1002
    assert load(config_file=str(config)).BinderHub.port == 1001
    assert load().BinderHub.port == 8585


def test_config_file_named_in_env(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("BinderHub: {port: 4321}")
    assert load(environ={"BINDERAPI_BINDERHUB__CONFIG_FILE": str(config)}).BinderHub.port == 4321


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "BinderHub:\n  use_registry: false\nGitHubRepoProvider:\n  banned_specs: ['^evil/.*']\n"),
    (".json", json.dumps({"BinderHub": {"use_registry": False}, "GitHubRepoProvider": {"banned_specs": ["^evil/.*"]}})),
    (".toml", "[BinderHub]\nuse_registry = false\n[GitHubRepoProvider]\nbanned_specs = ['^evil/.*']\n"),
])
def test_file_formats(tmp_path, suffix, text):
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    settings = load(config_file=str(path))
    assert settings.BinderHub.use_registry is False
    assert settings.GitHubRepoProvider.banned_specs == ["^evil/.*"]


def test_helm_values_file_config_block(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("""
replicas: 2
jupyterhub:
  hub: {baseUrl: /}
config:
  BinderHub:
    use_registry: true
    image_prefix: gcr.io/project/binder-
    hub_url: https://hub.example.org
  GitHubRepoProvider:
    high_quota_specs: ['^jupyterlab/.*']
  KubernetesBuildExecutor:
    memory_limit: 2G
""")
    settings = load(config_file=str(path))
    assert settings.BinderHub.image_prefix == "gcr.io/project/binder-"
    assert settings.BinderHub.hub_url_local == "https://hub.example.org/"
    assert settings.KubernetesBuildExecutor.memory_limit == 2 * 1024**3


HELM_VALUES = """
replicas: 2
image: {name: quay.io/jupyterhub/k8s-binderhub, tag: "1.0.0"}
service: {type: ClusterIP, port: 80}
ingress: {enabled: true, hosts: [binder.example.org]}
pdb: {}
registry:
  url: https://index.docker.io/v1/
  username: someone
  password: registry-password
cors: {allowOrigin: "*"}
imageBuilderType: dind
dind: {hostSocketDir: /var/run/dind-x}
extraConfig:
  00-snippet: |
    c.BinderHub.banner_message = "hi"
jupyterhub:
  hub:
    services:
      binder:
        apiToken: hub-token-from-values
    config: {JupyterHub: {authenticator_class: dummy}}
  singleuser: {cmd: jupyter-lab}
config:
  BinderHub:
    image_prefix: someone/binder-
    hub_url: https://hub.example.org
"""


def test_helm_values_file_translates_what_maps_and_names_what_it_ignores(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(HELM_VALUES)
    s = load(config_file=str(path))
    assert s.BinderHub.image_prefix == "someone/binder-"
    # registry: the chart's url is a docker config.json key; Docker Hub's v1 key means its v2 API
    assert (s.DockerRegistry.url, s.DockerRegistry.username, s.DockerRegistry.password) == (
        "https://registry-1.docker.io", "someone", "registry-password")
    assert s.KubernetesBuildExecutor.registry_credentials == {
        "registry": "https://index.docker.io/v1/", "username": "someone", "password": "registry-password"}
    assert s.BinderHub.cors_allow_origin == "*"
    assert s.KubernetesBuildExecutor.docker_host == "unix:///var/run/dind-x/docker.sock"
    assert s.BinderHub.hub_api_token == "hub-token-from-values"
    text = "\n".join(s.warnings)
    for key in ("jupyterhub.hub", "jupyterhub.singleuser", "extraConfig", "replicas", "image", "service", "ingress",
                "dind DaemonSet"):
        assert key in text, key
    assert all(str(path) in w for w in s.warnings)
    assert "pdb" not in text  # empty: nothing to ignore
    assert "registry-password" not in text and "hub-token-from-values" not in text
    assert "jupyterhub.hub.services" not in text  # the token was used


def test_helm_values_config_block_wins_and_unknown_builder_type_is_named(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("""
cors: {allowOrigin: "https://a.example"}
imageBuilderType: kaniko
registry: {url: registry.example.org, prefix: old-style/}
config:
  BinderHub: {cors_allow_origin: "https://b.example"}
""")
    s = load(config_file=str(path))
    assert s.BinderHub.cors_allow_origin == "https://b.example"
    assert s.DockerRegistry.url == "https://registry.example.org"
    assert s.KubernetesBuildExecutor.docker_host == "/var/run/docker.sock"
    text = "\n".join(s.warnings)
    assert "cors.allowOrigin ignored: config.BinderHub.cors_allow_origin is set" in text
    assert "imageBuilderType ('kaniko'" in text
    assert "registry.prefix" in text


def test_binderhub_service_chart_registry_credentials(tmp_path):
    """The 2i2c binderhub-service chart (API-only BinderHub) names them buildPodsRegistryCredentials."""
    path = tmp_path / "values.yaml"
    path.write_text("buildPodsRegistryCredentials: {server: 'quay.io', username: bot, password: pw}\n"
                    "config: {BinderHub: {enable_api_only_mode: true}}\n")
    s = load(config_file=str(path))
    assert (s.DockerRegistry.url, s.DockerRegistry.username, s.DockerRegistry.password) == ("https://quay.io", "bot", "pw")
    assert s.DockerBuildExecutor.registry_credentials == {"registry": "quay.io", "username": "bot", "password": "pw"}
    assert s.warnings == []


@pytest.mark.parametrize("builder,socket", [("pink", "unix:///var/run/pink/podman.sock"), ("host", "/var/run/docker.sock")])
def test_helm_values_image_builder_type(tmp_path, builder, socket):
    path = tmp_path / "values.yaml"
    path.write_text(f"imageBuilderType: {builder}\n")  # no config: block at all
    assert load(config_file=str(path)).KubernetesBuildExecutor.docker_host == socket


def test_python_config_file_is_refused_with_its_conversion(tmp_path):
    path = tmp_path / "binderhub_config.py"
    path.write_text('import os\nc.BinderHub.image_prefix = "gcr.io/x/binder-"\n'
                    'c.BinderHub.hub_api_token = "py-secret"\nc.GitHubRepoProvider.banned_specs = ["^evil/.*"]\n'
                    'c.BinderHub.build_token_secret = os.environ["X"]\n')
    with pytest.raises(ConfigError) as info:
        load(config_file=str(path))
    message = str(info.value)
    assert "Python (traitlets) config file, which binderapi does not run" in message
    assert "image_prefix: gcr.io/x/binder-" in message and "- ^evil/.*" in message
    assert "py-secret" not in message and "copy it from line 3" in message
    assert "line 1, 5" in message
    # the converted part is a working config file
    converted = message.split("binderhub_config.yaml):\n", 1)[1].split("\nConvert by hand", 1)[0]
    (tmp_path / "converted.yaml").write_text(converted.replace("'<secret: copy it from line 3>'", "x"))
    assert load(config_file=str(tmp_path / "converted.yaml")).BinderHub.image_prefix == "gcr.io/x/binder-"
    # the same file under another name is recognised by its content
    other = tmp_path / "binderhub_config"
    other.write_text(path.read_text())
    with pytest.raises(ConfigError, match="Python \\(traitlets\\) config file"):
        load(config_file=str(other))


@pytest.mark.parametrize("environ,expected", [
    ({"JUPYTERHUB_SERVICE_PREFIX": "/services/binder/"}, "/services/binder/"),
    ({"JUPYTERHUB_SERVICE_PREFIX": "/jh/services/binder/", "JUPYTERHUB_BASE_URL": "/jh/"}, "/jh/services/binder/"),
    ({"JUPYTERHUB_BASE_URL": "/jh/", "JUPYTERHUB_SERVICE_NAME": "binder"}, "/jh/services/binder/"),
    ({"JUPYTERHUB_BASE_URL": "/jh/"}, "/"),  # the hub's own prefix is not this service's
])
def test_base_url_from_jupyterhub_managed_service_environment(environ, expected):
    assert load(environ=environ).BinderHub.base_url == expected


def test_configured_base_url_beats_jupyterhub_service_prefix(tmp_path):
    environ = {"JUPYTERHUB_SERVICE_PREFIX": "/services/binder/"}
    config = tmp_path / "c.yaml"
    config.write_text("BinderHub: {base_url: /from-file/}\n")
    assert load(environ=environ, config_file=str(config)).BinderHub.base_url == "/from-file/"
    assert load(environ={**environ, "BINDERAPI_BINDERHUB__BASE_URL": "/env/"}).BinderHub.base_url == "/env/"
    assert load(environ=environ, cli={"BinderHub": {"base_url": "/cli/"}}).BinderHub.base_url == "/cli/"


def test_legacy_environment_variables_are_defaults(tmp_path):
    environ = {
        "JUPYTERHUB_API_TOKEN": "hubtoken", "JUPYTERHUB_API_URL": "http://hub:8081/hub/api/",
        "BINDERHUB_BUILD_TOKEN_SECRET": "00ff", "GITHUB_ACCESS_TOKEN": "ghtoken", "GITHUB_CLIENT_ID": "cid",
        "GITHUB_CLIENT_SECRET": "csecret", "GITLAB_ACCESS_TOKEN": "gltoken", "GITLAB_PRIVATE_TOKEN": "glprivate",
        "BUILD_NAMESPACE": "binder-builds",
    }
    s = load(environ=environ)
    assert s.BinderHub.hub_api_token == "hubtoken"
    assert s.Launcher.hub_api_url == "http://hub:8081/hub/api/"
    assert s.BinderHub.build_token_secret == "00ff"
    assert (s.GitHubRepoProvider.access_token, s.GitHubRepoProvider.client_id, s.GitHubRepoProvider.client_secret) == ("ghtoken", "cid", "csecret")
    assert s.GistRepoProvider.access_token == "ghtoken"  # gists use GitHub's credentials
    assert (s.GitLabRepoProvider.access_token, s.GitLabRepoProvider.private_token) == ("gltoken", "glprivate")
    assert s.KubernetesBuildExecutor.namespace == "binder-builds"
    # a config file beats them, as it beat traitlets defaults read from the environment
    config = tmp_path / "c.yaml"
    config.write_text("KubernetesBuildExecutor: {namespace: from-file}\n")
    assert load(environ=environ, config_file=str(config)).KubernetesBuildExecutor.namespace == "from-file"


@pytest.mark.parametrize("option,value,targets", DEPRECATED, ids=[d[0] for d in DEPRECATED])
def test_deprecated_options_forward_and_warn(option, value, targets):
    settings = load(cli={"BinderHub": {option: value}})
    expected = EXPECTED_VALUE.get(value, value) if isinstance(value, str) else value
    for section, target in targets:
        assert getattr(settings.section(section), target) == expected, (section, target)
    notices = [w for w in settings.warnings if f"BinderHub.{option}" in w]
    assert len(notices) == 1
    assert targets[0][0] + "." + targets[0][1] in notices[0]


def test_deprecated_option_loses_to_its_replacement():
    settings = load(cli={"BinderHub": {"pod_quota": 5}, "LaunchQuota": {"total_quota": 9}})
    assert settings.LaunchQuota.total_quota == 9
    assert any("ignored" in w for w in settings.warnings)


def test_no_warnings_without_deprecated_options():
    assert load(cli={"BinderHub": {"port": 1}}).warnings == []


def test_inheritance_from_parent_sections():
    s = load(cli={"BuildExecutor": {"repo2docker_extra_args": ["--debug"]}, "RepoProvider": {"banned_specs": ["^x"]},
                  "DockerBuildExecutor": {"repo2docker_extra_args": []}})
    assert s.KubernetesBuildExecutor.repo2docker_extra_args == ["--debug"]
    assert s.DockerBuildExecutor.repo2docker_extra_args == []  # set on the child: child wins
    assert s.GitLabRepoProvider.banned_specs == ["^x"]
    assert s.GistRepoProvider.banned_specs == ["^x"]


@pytest.mark.parametrize("value,expected", [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)), (1000, 1000), ("100K", 102400)])
def test_byte_sizes(value, expected):
    assert load(cli={"BuildExecutor": {"memory_limit": value}}).BuildExecutor.memory_limit == expected


@pytest.mark.parametrize("value,expected", [("INFO", logging.INFO), ("debug", logging.DEBUG), (40, 40), ("20", 20), ("WARN", 30)])
def test_log_level_by_name_or_number(value, expected):
    assert load(cli={"BinderHub": {"log_level": value}}).BinderHub.log_level == expected


def test_class_options_accept_short_names_and_paths():
    s = load(cli={"BinderHub": {"build_class": "docker", "registry_class": "binderhub.registry.DockerRegistry"}})
    assert s.BinderHub.build_class == "docker"
    # left at their defaults, the cleaner and quota follow the build backend
    assert s.BinderHub.build_cleaner_class == "docker"
    assert s.BinderHub.launch_quota_class == "docker"
    s = load(cli={"BinderHub": {"build_class": "docker", "launch_quota_class": "none"}})
    assert s.BinderHub.launch_quota_class == "none"


def test_base_url_and_hub_url_are_normalised():
    s = load(cli={"BinderHub": {"base_url": "services/binder", "hub_url": "http://127.0.0.1:8000"}})
    assert s.BinderHub.base_url == "/services/binder/"
    assert s.BinderHub.hub_url == "http://127.0.0.1:8000/" == s.BinderHub.hub_url_local


def test_ban_networks_are_parsed():
    s = load(cli={"BinderHub": {"ban_networks": {"10.0.0.0/8": "internal", "2001:db8::/32": "doc"}}})
    assert s.BinderHub.ban_networks == {"10.0.0.0/8": "internal", "2001:db8::/32": "doc"}


@pytest.mark.parametrize("cli,fragments", [
    ({"BinderHub": {"ban_networks": {"10.0.0.300/8": "x"}}}, ["--BinderHub.ban_networks", "10.0.0.300/8", "not a valid CIDR"]),
    ({"BinderHub": {"ban_networks": {"0.0.0.0/0": "world"}}}, ["0.0.0.0/0", "ban_networks_min_prefix_len"]),
    ({"BinderHub": {"port": "eighty"}}, ["--BinderHub.port", "integer"]),
    ({"BinderHub": {"imge_prefix": "x"}}, ["unknown option", "BinderHub.image_prefix"]),
    ({"BinderHb": {"port": 1}}, ["unknown section", "BinderHub"]),
    ({"BuildExecutor": {"memory_limit": "lots"}}, ["memory_limit", "byte size"]),
    ({"BinderHub": {"log_level": "LOUD"}}, ["log_level", "not a log level"]),
    ({"GitHubRepoProvider": {"spec_config": [{"pattern": 1, "config": {}}]}}, ["spec_config", "pattern"]),
], ids=["cidr", "min-prefix", "type", "unknown-key", "unknown-section", "bytes", "log-level", "spec-config"])
def test_bad_configuration_is_explained(cli, fragments):
    with pytest.raises(ConfigError) as info:
        load(cli=cli)
    message = str(info.value)
    assert "command-line flags" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("BinderHub:\n  concurrent_build_limit: many\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: BinderHub.concurrent_build_limit"):
        load(config_file=str(path))
    path.write_text("BinderHub: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(config_file=str(path))
    with pytest.raises(ConfigError, match="Cannot read config file .*missing.yaml: No such file"):
        load(config_file=str(tmp_path / "missing.yaml"))


def test_errors_name_the_environment_variable():
    with pytest.raises(ConfigError, match="BINDERAPI_BINDERHUB__PORT: Input should be a valid integer"):
        load(environ={"BINDERAPI_BINDERHUB__PORT": "x"})
    with pytest.raises(ConfigError, match="BINDERAPI_BINDERHB__PORT names no section"):
        load(environ={"BINDERAPI_BINDERHB__PORT": "1"})
    with pytest.raises(ConfigError, match="unknown option BINDERAPI_BINDERHUB__NOPE"):
        load(environ={"BINDERAPI_BINDERHUB__NOPE": "1"})


def test_every_option_is_reachable_from_the_environment():
    environ = {"BINDERAPI_DOCKERREGISTRY__URL": "http://127.0.0.1:5000",
               "BINDERAPI_BINDERHUB__BAN_NETWORKS": '{"192.0.2.0/24": "test-net"}',
               "BINDERAPI_KUBERNETESBUILDEXECUTOR__NODE_SELECTOR": '{"a": "b"}',
               "BINDERAPI_GITREPOPROVIDER__ALLOWED_PROTOCOLS": '["https"]'}
    s = load(environ=environ)
    assert s.DockerRegistry.url == "http://127.0.0.1:5000"
    assert s.BinderHub.ban_networks == {"192.0.2.0/24": "test-net"}
    assert s.KubernetesBuildExecutor.node_selector == {"a": "b"}
    assert s.GitRepoProvider.allowed_protocols == ["https"]


def test_show_config_redacts_secrets():
    s = load(cli={"BinderHub": {"hub_api_token": "sekrit-token"}, "GitHubRepoProvider": {"access_token": "gh-sekrit"},
                  "BuildExecutor": {"registry_credentials": {"password": "pw-sekrit"}}})
    text = show_config_json(s)
    for secret in ("sekrit-token", "gh-sekrit", "pw-sekrit"):
        assert secret not in text
    dumped = json.loads(text)
    assert dumped["BinderHub"]["hub_api_token"] == "[secret]"
    assert set(dumped) == set(SECTIONS)


def test_show_config_never_shows_operator_tokens():
    """A list of secrets is redacted whole, in the YAML and the JSON dump alike."""
    from binderapi.settings.dump import show_config_text

    s = load(cli={"BinderHub": {"operator_tokens": ["op-sekrit-1", "op-sekrit-2"]}})
    assert s.BinderHub.operator_tokens == ["op-sekrit-1", "op-sekrit-2"]
    for text in (show_config_json(s), show_config_text(s)):
        assert "op-sekrit" not in text
    assert json.loads(show_config_json(s))["BinderHub"]["operator_tokens"] == "[secret]"


def test_a_higher_source_replaces_a_dict_option_whole(tmp_path):
    """As in traitlets: the environment's ban_networks replaces the file's, it is not merged into it."""
    config = tmp_path / "c.yaml"
    config.write_text("BinderHub:\n  ban_networks: {'192.0.2.0/24': file}\n  port: 1001\n")
    s = load(config_file=str(config), environ={"BINDERAPI_BINDERHUB__BAN_NETWORKS": '{"198.51.100.0/24": "env"}'})
    assert s.BinderHub.ban_networks == {"198.51.100.0/24": "env"}
    assert s.BinderHub.port == 1001


def test_deprecated_option_yields_to_its_replacement_from_any_source(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("LaunchQuota: {total_quota: 9}\n")
    s = load(config_file=str(config), cli={"BinderHub": {"pod_quota": 5}})
    assert (s.LaunchQuota.total_quota, s.KubernetesLaunchQuota.total_quota) == (9, 9)
    assert any("BinderHub.pod_quota is deprecated and ignored here: LaunchQuota.total_quota is set" in w for w in s.warnings)
    assert load(cli={"BinderHub": {"pod_quota": 5}}).KubernetesLaunchQuota.total_quota == 5


def test_config_file_named_in_dotenv_and_errors_name_the_dotenv_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("BinderHub: {port: 4321}")
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"BINDERAPI_BINDERHUB__CONFIG_FILE={config}\n")
    s = load(dotenv_path=dotenv)
    assert (s.BinderHub.port, s.BinderHub.config_file) == (4321, str(config))
    dotenv.write_text("BINDERAPI_BINDERHUB__PORT=many\n")
    with pytest.raises(ConfigError, match=rf"Invalid configuration in .env file {dotenv}: BINDERAPI_BINDERHUB__PORT: "):
        load(dotenv_path=dotenv)


def test_sources_valid_alone_can_be_invalid_together(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("BinderHub: {ban_networks_min_prefix_len: 8}\n")
    with pytest.raises(ConfigError) as info:
        load(config_file=str(config), cli={"BinderHub": {"ban_networks": {"16.0.0.0/4": "x"}}})
    message = str(info.value)
    assert message.startswith("Invalid configuration in the combined configuration")
    assert "16.0.0.0/4" in message and "ban_networks_min_prefix_len" in message
