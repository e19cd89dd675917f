"""compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

No engine runs here, so nothing is started. What can go wrong in these files without anyone
noticing until `docker compose up` is checked against the files they depend on instead:

- pins: every image has an exact tag; the collector image is the release of otel/builder-config.yaml,
  the MLflow server the release of the client in requirements.lock, the API tag the project version;
- wiring: every host:port that a config file names (prometheus.yml targets, alertmanager.yml
  webhooks, Grafana datasources, the API's and the collector's endpoints) is a compose service that
  listens on that port; the ports are those of docs/telemetry.md;
- files: every bind-mounted path exists, and every config path a command names lies in a mount;
- health: every service has a healthcheck except the distroless collector, and `service_healthy`
  dependencies point at services that have one;
- secrets: passwords only come from `${VAR:-documented local default}` interpolations.

When a Compose implementation is installed, `config -q` validates the file against its schema too
(it needs no engine). Docker Compose v2 is preferred; the Debian `docker-compose` 1.29 works as a
fallback on a copy without the top-level `name` key, which predates it.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness import require_binary

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
TELEMETRY_DOC = REPO / "docs" / "telemetry.md"
BUILDER_CONFIG = REPO / "otel" / "builder-config.yaml"
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "prometheus" / "alertmanager.yml"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
TEMPO_CONFIG = REPO / "deploy" / "tempo.yaml"
POSTGRES_INIT = REPO / "deploy" / "postgres-init.sql"

# Images without a shell or HTTP client, so Docker can run no healthcheck inside them. Each one is
# explained in compose.yaml and docs/deployment.md (how its health is watched instead).
DISTROLESS = {"otel-collector"}
# The only secret values allowed in compose.yaml: defaults for local use, listed in the docs.
LOCAL_DEFAULTS = {
    "POSTGRES_PASSWORD": "stockpred-local-only",
    "GRAFANA_ADMIN_PASSWORD": "admin",
    "API_KEY": "stockpred-local-api-key",
}
# What a user opens on localhost (docs/deployment.md): API, Prometheus, Grafana, Redis, OTLP, Alertmanager.
PUBLISHED_PORTS = {8000, 9090, 3001, 6379, 4317, 4318, 9093}
# Projects whose release numbers have fewer parts than x.y.z, so a shorter tag is still exact:
# PostgreSQL (since 10) releases major.minor (16.9); the echo server numbers releases 1, 2, ... 37.
SHORT_RELEASES = {
    "postgres": re.compile(r"^\d+\.\d+(-\w+)?$"),
    "mendhak/http-https-echo": re.compile(r"^\d+$"),
}

EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")
INTERPOLATION = re.compile(r"\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"://(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")


# --- loading and small helpers -------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "compose.yaml has no services"
    return found


def split_image(image: str) -> tuple[str, str]:
    """`registry/repo:tag@digest` -> (registry/repo, tag); the tag is "" when there is none."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return name, ""
    repo, tag = name.rsplit(":", 1)
    return repo, tag


def port_entries(service: dict[str, Any]) -> Iterator[tuple[str | None, int | None, int]]:
    """(host ip, host port, container port) of each `ports` entry, short or long syntax."""
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            yield entry.get("host_ip"), int(published) if published else None, int(entry["target"])
            continue
        parts = str(entry).split("/", 1)[0].split(":")
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        host_ip = (":".join(parts[:-2]) or None) if len(parts) > 2 else None
        yield host_ip, host, container


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service's container listens on, as far as compose.yaml tells (ports + expose)."""
    ports = {container for _, _, container in port_entries(service)}
    return ports | {int(str(port).split("/", 1)[0]) for port in service.get("expose", [])}


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str, bool]]:
    """(type, source, target, read_only) of each volume entry; type is `bind` or `volume`."""
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            yield entry["type"], entry.get("source", ""), entry["target"], bool(entry.get("read_only"))
            continue
        source, target, *options = str(entry).split(":")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield kind, source, target, "ro" in (options[0].split(",") if options else [])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means `service_started`)."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def seconds(value: str) -> float:
    match = DURATION.match(value)
    assert match, f"not a compose duration: {value!r}"
    assert any(match.groups()), f"empty compose duration: {value!r}"
    hours, minutes, secs, millis = (int(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def resolve(substituted: str) -> str:
    """Interpolations replaced by their defaults, as compose does with the variable unset."""
    return INTERPOLATION.sub(lambda m: m["arg"] if (m["op"] or "").endswith("-") else "", substituted)


def host_port(address: str) -> tuple[str, int]:
    """`host:port` or a URL -> (host, port), with the scheme's default port when none is given."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname, f"no host in {address!r}"
    default = {"http": 80, "https": 443, "redis": 6379, "postgresql": 5432}.get(parts.scheme.split("+")[0])
    port = parts.port or default
    assert port, f"no port in {address!r}"
    return parts.hostname, port


def assert_reaches(services: dict[str, dict[str, Any]], address: str, what: str) -> None:
    """`address` names a compose service and a port that service's container listens on."""
    host, port = host_port(address)
    assert host in services, f"{what}: {address} names no compose service ({sorted(services)})"
    listening = container_ports(services[host])
    assert port in listening, f"{what}: {address}, but service {host} only lists ports {sorted(listening)}"


def telemetry_ports() -> list[tuple[str, int]]:
    """(compose service, port) rows of the Ports table of docs/telemetry.md.

    Rows without a service name in backticks continue the service above them (the collector's
    exporter, self-metrics and health_check rows follow its OTLP row).
    """
    section = TELEMETRY_DOC.read_text().split("## Ports", 1)[1].split("\n## ", 1)[0]
    rows: list[tuple[str, int]] = []
    current = ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not re.search(r"\d", cells[1]):
            continue
        named = re.search(r"\(`([a-z0-9-]+)`\)", cells[0])
        current = named.group(1) if named else current
        assert current, f"port row before any service name: {line}"
        rows += [(current, int(port)) for port in re.findall(r"\d+", cells[1])]
    return rows


# --- images --------------------------------------------------------------------------------------


def test_every_image_has_an_exact_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name}: no image (a build needs an image name with a tag too)"
        repo, tag = split_image(service["image"])
        assert tag, f"{name}: {service['image']} has no tag"
        assert tag != "latest", f"{name}: {service['image']} is not pinned"
        exact = EXACT_VERSION.match(tag) or (repo in SHORT_RELEASES and SHORT_RELEASES[repo].match(tag))
        assert exact, f"{name}: tag {tag!r} is not an exact release (x.y.z), so it can move"


def test_collector_image_is_the_release_of_the_builder_manifest(services: dict[str, dict[str, Any]]) -> None:
    manifest = _load_yaml(BUILDER_CONFIG)
    versions = {
        entry["gomod"].split()[-1]
        for kind in ("receivers", "processors", "connectors", "exporters", "extensions")
        for entry in manifest[kind]
    }
    assert len(versions) == 1, f"builder-config.yaml mixes releases: {versions}"
    repo, tag = split_image(services["otel-collector"]["image"])
    assert repo == "otel/opentelemetry-collector-contrib"
    assert f"v{tag}" == versions.pop()


def test_mlflow_server_is_the_release_of_the_client(services: dict[str, dict[str, Any]]) -> None:
    lock = (REPO / "requirements.lock").read_text()
    match = re.search(r"^mlflow==(\S+)$", lock, re.MULTILINE)
    assert match, "requirements.lock pins no mlflow"
    repo, tag = split_image(services["mlflow"]["image"])
    assert repo == "ghcr.io/mlflow/mlflow"
    # `-full` is the variant with database drivers (psycopg2), needed for the PostgreSQL store.
    assert tag == f"v{match.group(1)}-full"


def test_locust_image_is_the_release_of_the_load_extra(services: dict[str, dict[str, Any]]) -> None:
    """compose's load generator runs the Locust that `make stack` installs (requirements.lock)."""
    lock = (REPO / "requirements.lock").read_text()
    match = re.search(r"^locust==(\S+)$", lock, re.MULTILINE)
    assert match, "requirements.lock pins no locust"
    locust = services["locust"]
    assert split_image(locust["image"]) == ("locustio/locust", match.group(1))
    args = command_args(locust)
    assert "--host=http://api:8000" in args
    assert_reaches(services, "http://api:8000", "locust --host")
    locustfiles = [arg.split("=", 1)[1] for arg in args if arg.startswith("--locustfile=")]
    mounted = {target: source for kind, source, target, _ in mounts(locust) if kind == "bind"}
    assert [mounted.get(path) for path in locustfiles] == ["./deploy/locustfile.py"]


def test_api_image_is_built_here_and_tagged_with_the_project_version(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert api["build"]["context"] == "."
    assert (REPO / api["build"].get("dockerfile", "Dockerfile")).is_file()
    assert split_image(api["image"])[1] == version


def test_deployment_doc_lists_every_image(services: dict[str, dict[str, Any]]) -> None:
    doc = DEPLOYMENT_DOC.read_text()
    for name, service in services.items():
        assert service["image"] in doc, f"docs/deployment.md does not list {name}'s image {service['image']}"


# --- health and start order ----------------------------------------------------------------------


def test_every_service_has_a_healthcheck_except_distroless_ones(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        if name in DISTROLESS:
            assert check is None, f"{name} is listed as distroless but has a healthcheck"
            continue
        assert check, f"{name}: no healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check.get("test")
        assert isinstance(test, list), f"{name}: healthcheck test should be a list"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck test starts with {test[0]!r}"
        assert len(test) > 1, f"{name}: empty healthcheck"
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"
        assert seconds(check["timeout"]) <= seconds(check["interval"]), f"{name}: timeout > interval"
        assert int(check["retries"]) >= 1


def test_distroless_services_are_explained(services: dict[str, dict[str, Any]]) -> None:
    doc = DEPLOYMENT_DOC.read_text()
    for name in DISTROLESS:
        assert name in services
        assert re.search(rf"{re.escape(name)}.*distroless|distroless.*{re.escape(name)}", doc, re.DOTALL)


def test_dependencies_exist_and_wait_only_on_services_with_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                # Otherwise `up` fails: Docker never reports a service without a healthcheck healthy.
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy"


def test_api_waits_for_its_stores(services: dict[str, dict[str, Any]]) -> None:
    deps = depends_on(services["api"])
    for store in ("postgres", "redis", "mlflow"):
        assert deps.get(store) == "service_healthy", f"api should wait for a healthy {store}"


# --- files ---------------------------------------------------------------------------------------


def test_bind_mounts_exist_and_are_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for kind, source, target, read_only in mounts(service):
            if kind != "bind":
                continue
            assert source.startswith("./"), f"{name}: bind mount {source} is not relative to the repository"
            assert (REPO / source).exists(), f"{name}: {source} does not exist in the repository"
            # Configuration only: containers must not write into the checkout.
            assert read_only, f"{name}: bind mount {source}:{target} is not read-only"


def test_named_volumes_are_declared_and_used(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {source for s in services.values() for kind, source, _, _ in mounts(s) if kind == "volume"}
    assert used == declared, f"used but not declared: {used - declared}; unused: {declared - used}"


def test_config_paths_in_commands_lie_in_existing_mounts(services: dict[str, dict[str, Any]]) -> None:
    checked: dict[str, list[str]] = {}
    for name, service in services.items():
        binds = [(source, target) for kind, source, target, _ in mounts(service) if kind == "bind"]
        for arg in command_args(service):
            value = arg.split("=", 1)[-1]
            for source, target in binds:
                if value == target or value.startswith(target.rstrip("/") + "/"):
                    host = (
                        REPO / source / Path(value).relative_to(target) if value != target else REPO / source
                    )
                    assert host.exists(), f"{name}: {arg} -> {host.relative_to(REPO)} does not exist"
                    checked.setdefault(name, []).append(value)
    # The services whose configuration comes from this repository through a command-line path.
    assert set(checked) >= {"otel-collector", "tempo", "prometheus", "alertmanager"}, checked


def test_grafana_mounts_follow_its_readme(services: dict[str, dict[str, Any]]) -> None:
    binds = {target: source for kind, source, target, _ in mounts(services["grafana"]) if kind == "bind"}
    assert binds.get("/etc/grafana/provisioning") == "./grafana/provisioning"
    assert binds.get("/var/lib/grafana/dashboards") == "./grafana/dashboards"
    providers = _load_yaml(REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    assert {p["options"]["path"] for p in providers["providers"]} == {"/var/lib/grafana/dashboards"}


# --- ports and wiring ----------------------------------------------------------------------------


def test_ports_match_the_telemetry_contract(services: dict[str, dict[str, Any]]) -> None:
    rows = telemetry_ports()
    assert len(rows) >= 10, f"could not read the Ports table of docs/telemetry.md: {rows}"
    for service, port in rows:
        assert service in services, f"docs/telemetry.md names service {service}, compose.yaml has none"
        assert port in container_ports(services[service]), f"{service} does not list port {port}"


def test_published_ports_are_the_documented_ones_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    published: set[int] = set()
    for name, service in services.items():
        for host_ip, host, container in port_entries(service):
            # Same number outside and inside, so the URLs in the docs work from the host too.
            assert host == container, f"{name}: host port {host} maps to container port {container}"
            # Databases with default passwords must not be reachable from the network.
            assert host_ip == "127.0.0.1", f"{name}: port {container} is published on all interfaces"
            published.add(container)
    assert published >= PUBLISHED_PORTS, f"not published: {PUBLISHED_PORTS - published}"


def test_grafana_listens_on_the_documented_port(services: dict[str, dict[str, Any]]) -> None:
    assert environment(services["grafana"]).get("GF_SERVER_HTTP_PORT") == "3001"


def test_prometheus_targets_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = _load_yaml(PROMETHEUS_CONFIG)
    targets = [
        (job["job_name"], target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    targets += [
        ("alerting", target)
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]
    assert targets
    for job, target in targets:
        # `localhost` in Prometheus' own container is the prometheus service.
        address = target.replace("localhost:", "prometheus:", 1)
        assert_reaches(services, address, f"prometheus.yml job {job}")


def test_alertmanager_webhooks_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = _load_yaml(ALERTMANAGER_CONFIG)
    urls = [hook["url"] for r in config["receivers"] for hook in r.get("webhook_configs", [])]
    assert urls, "alertmanager.yml has no webhook receivers"
    for url in urls:
        assert_reaches(services, url, "alertmanager.yml webhook")


# Datasources for backends compose does not run, with where they come from instead.
NOT_IN_COMPOSE = {"Jaeger": "the trace backend of otel/collector.jaeger.yaml (deploy/jaeger.yaml)"}


def test_grafana_datasources_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    for source in _load_yaml(DATASOURCES)["datasources"]:
        if source["name"] in NOT_IN_COMPOSE:
            # Once compose runs it, it must be checked like the others: drop it from the list.
            assert host_port(source["url"])[0] not in services, source["name"]
            continue
        assert_reaches(services, source["url"], f"Grafana datasource {source['name']}")


def test_api_sends_otlp_http_to_the_collector(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["api"])
    endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert host_port(endpoint) == ("otel-collector", 4318), "4318 is the collector's OTLP/HTTP port"
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
    assert_reaches(services, endpoint, "api OTLP endpoint")


def test_api_stores_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["api"])
    for key in ("DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        assert_reaches(services, resolve(env[key]), f"api {key}")
    assert (
        urlsplit(resolve(env["DATABASE_URL"])).path == "/" + environment(services["postgres"])["POSTGRES_DB"]
    )


def test_mlflow_store_is_the_database_the_init_script_creates(services: dict[str, dict[str, Any]]) -> None:
    store = resolve(environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    assert_reaches(services, store, "mlflow backend store")
    database = urlsplit(store).path.lstrip("/")
    assert re.search(rf"^CREATE DATABASE {database};$", POSTGRES_INIT.read_text(), re.MULTILINE)
    init_mounts = [t for _, s, t, _ in mounts(services["postgres"]) if s == "./deploy/postgres-init.sql"]
    assert init_mounts, "deploy/postgres-init.sql is not mounted into postgres"
    assert init_mounts[0].startswith("/docker-entrypoint-initdb.d/")


def test_collector_sends_traces_to_tempo(services: dict[str, dict[str, Any]]) -> None:
    endpoint = environment(services["otel-collector"])["TRACES_OTLP_ENDPOINT"]
    assert_reaches(services, endpoint, "collector TRACES_OTLP_ENDPOINT")
    tempo = _load_yaml(TEMPO_CONFIG)
    receiver = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host_port(receiver)[1] == host_port(endpoint)[1]
    assert tempo["server"]["http_listen_port"] in container_ports(services["tempo"])


def test_api_data_dir_is_its_volume(services: dict[str, dict[str, Any]]) -> None:
    data_dir = environment(services["api"])["DATA_DIR"]
    assert data_dir in {target for kind, _, target, _ in mounts(services["api"]) if kind == "volume"}
    assert f"DATA_DIR={data_dir}" in DOCKERFILE.read_text()


# --- secrets -------------------------------------------------------------------------------------


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (dotted path, string) in the YAML tree, keys included in the path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")
    elif isinstance(node, str | int | float):
        yield path, str(node)


def _secret_values(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, value) for each secret: values of secret-named keys and passwords inside URLs."""
    for path, value in _strings(compose):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key):
            yield path, value
        for match in URL_CREDENTIALS.finditer(value):
            yield f"{path} (URL password)", match.group("password")


def test_secrets_come_only_from_the_environment(compose: dict[str, Any]) -> None:
    found = list(_secret_values(compose))
    assert len(found) >= 4, f"expected the database and Grafana passwords, found {found}"
    for where, value in found:
        match = INTERPOLATION.fullmatch(value)
        assert match, f"{where}: a literal secret; use ${{VAR:-local default}} instead"
        assert match["var"] in LOCAL_DEFAULTS, f"{where}: {match['var']} is not a documented secret variable"
        if match["op"] and match["op"].endswith("-"):
            assert match["arg"] == LOCAL_DEFAULTS[match["var"]], f"{where}: undocumented default"


def test_local_defaults_are_documented() -> None:
    doc = DEPLOYMENT_DOC.read_text()
    for var, default in LOCAL_DEFAULTS.items():
        assert var in doc, f"docs/deployment.md should name {var}"
        assert f"`{default}`" in doc, f"docs/deployment.md should give {var}'s default `{default}`"


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_builds_a_pinned_multi_stage_non_root_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for kw, rest in instructions
        if kw == "FROM"
    ]
    assert len(bases) >= 2, "expected a build stage and a runtime stage"
    for base in bases:
        repo, tag = split_image(base)
        assert repo == "python", base
        assert re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), f"base {base} is not an exact slim Python 3.11"
    assert any(kw == "COPY" and rest.startswith("--from=") for kw, rest in instructions)
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    assert ("EXPOSE", "8000") in instructions
    assert any(kw == "HEALTHCHECK" and "/health" in rest for kw, rest in instructions)
    assert ("CMD", '["stockpred", "serve", "--host", "0.0.0.0", "--port", "8000"]') in instructions
    assert any(kw == "RUN" and "-c requirements.lock" in rest for kw, rest in instructions)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified to the pattern forms .dockerignore uses: the last pattern that
    matches the path or one of its parent directories decides; `**/` also matches at the top."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        pattern = raw.removeprefix("!").rstrip("/")
        forms = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(candidate, form) for candidate in candidates for form in forms):
            ignored = not raw.startswith("!")
    return ignored


def test_dockerignore_keeps_only_what_the_build_needs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "service/cli.py",
        "service/storage/migrations/env.py",
    ]
    for path in needed:
        assert not _ignored(path, patterns), f".dockerignore leaves out {path}, which the build copies"
    unwanted = [
        ".venv/bin/python",
        ".git/HEAD",
        "data/stockpred.db",
        "tests/conftest.py",
        ".env",
        "service/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "benchmarks/results/x.json",
    ]
    for path in unwanted:
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"


# --- the Compose implementation's own validation ------------------------------------------------


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates(tmp_path: Path) -> None:
    """`config -q` parses, interpolates and checks the file against the Compose schema; no engine.

    `make test` installs Debian's docker-compose for this (scripts/install-system-deps.sh); without
    it the test skips locally and fails in CI, like every other missing component.
    """
    cli = _compose_cli() or [require_binary("docker-compose")]
    compose_file = COMPOSE_FILE
    if cli[0].endswith("docker-compose"):
        # 1.29 predates the top-level `name` key; validate everything else.
        data = _load_yaml(COMPOSE_FILE)
        data.pop("name", None)
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [*cli, "--project-directory", str(REPO), "-f", str(compose_file), "config", "-q"]
    # Only PATH and HOME: the defaults of the interpolations are validated, not a user's secrets.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr or result.stdout
