"""The rooms of services/ and who may import whom, read from the source with ``ast``
(every import counts: at module level, inside a function, under TYPE_CHECKING).

- **Service roles** (intake, partner, prescreen, webhooks, training, receiver) import
  the kernel, ``schemas`` and their own package, never one another; the partner also
  imports ``services/alignment`` (its side of PSI).
- **Below them**: the kernel imports only itself; alignment only the kernel.
- **The local stack harness** (``services/stack``) runs the roles but imports nothing
  that sits above it (demo, evaluate, bench, the CLI...).
- **bench is a leaf**: nothing outside it imports it, except the one lazy registration
  of ``fedscreen bench`` in the CLI dispatcher; of the tests, only bench's own.
- **Size**: no module in services/ is longer than 600 lines.

Each check is also run on a small made-up tree with the violation it exists for, so a
check that stopped biting would fail here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
TESTS = ROOT / "tests"

ROLES = frozenset({"intake", "partner", "prescreen", "webhooks", "training", "receiver"})
ROLE_EXTRAS: Mapping[str, frozenset[str]] = {"partner": frozenset({"alignment"})}
BELOW_ROLES: Mapping[str, frozenset[str]] = {
    "kernel": frozenset(),
    "alignment": frozenset({"kernel"}),
}
STACK_MAY_IMPORT = frozenset({"kernel", "alignment"}) | ROLES
BENCH = "bench"
BENCH_IMPORTERS = frozenset({"services.commands"})
"""The CLI dispatcher registers ``fedscreen bench``, lazily (inside a function), and
copes with its absence (the runtime image leaves the benchmark out)."""
MAX_LINES = 600


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name, e.g. services.receiver.settings
    target: str  # the dotted module the import reaches into
    top_level: bool  # at module level, not inside a function or class


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, *, is_package: bool = False) -> Iterator[Edge]:
    """Every import in ``source`` as the module it reaches into: ``from a.b import c``
    reaches into ``a.b`` (or into ``a.c`` when ``a`` is a bare top-level package, as in
    ``from services import commands``); relative imports are resolved against
    ``module``."""
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, alias.name, id(node) in top_level)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            if "." in base:
                yield Edge(module, base, id(node) in top_level)
            else:
                for alias in node.names:
                    yield Edge(module, f"{base}.{alias.name}", id(node) in top_level)


def room(dotted: str) -> str | None:
    """The package of services/ a dotted name lives in (``services.kernel.crypto`` ->
    ``kernel``, ``services.cli`` -> ``cli``); None outside services."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def read_tree(root: Path, package: str) -> dict[str, tuple[str, bool]]:
    """Module name -> (source, is a package) for every .py under ``root/package``."""
    return {
        module_name(path, root): (path.read_text(), path.name == "__init__.py")
        for path in sorted((root / package).rglob("*.py"))
    }


def edges(tree: Mapping[str, tuple[str, bool]]) -> list[Edge]:
    return [
        edge
        for module, (source, is_package) in tree.items()
        for edge in imports(source, module, is_package=is_package)
        if room(edge.target) is not None
    ]


def role_violations(found: list[Edge]) -> list[str]:
    out = []
    for edge in found:
        here, there = room(edge.importer), room(edge.target)
        if here is None:
            continue
        if here in ROLES:
            allowed = {here, "kernel"} | ROLE_EXTRAS.get(here, frozenset())
        elif here in BELOW_ROLES:
            allowed = {here} | BELOW_ROLES[here]
        elif here == "stack":
            allowed = {here} | STACK_MAY_IMPORT
        else:
            continue
        if there not in allowed:
            out.append(f"{edge.importer} imports {edge.target}")
    return out


def bench_importers(found: list[Edge]) -> dict[str, list[Edge]]:
    """Modules outside services/bench that import it, with the imports."""
    out: dict[str, list[Edge]] = {}
    for edge in found:
        if room(edge.target) == BENCH and room(edge.importer) != BENCH:
            out.setdefault(edge.importer, []).append(edge)
    return out


def long_modules(lengths: Mapping[str, int]) -> list[str]:
    return sorted(f"{path}: {count} lines" for path, count in lengths.items() if count > MAX_LINES)


# -- the real tree ----------------------------------------------------------------------
def services_edges() -> list[Edge]:
    return edges(read_tree(ROOT, "services"))


def test_service_roles_import_only_the_kernel_schemas_and_themselves() -> None:
    assert role_violations(services_edges()) == []


def test_bench_is_a_leaf_but_for_the_cli_registration() -> None:
    importers = bench_importers(services_edges())
    assert set(importers) == BENCH_IMPORTERS
    for edge in importers["services.commands"]:
        assert not edge.top_level, "the CLI imports services.bench only when registering it"


def test_of_the_tests_only_benchs_own_import_it() -> None:
    tree = read_tree(ROOT, "tests")
    importers = {edge.importer for edge in edges(tree) if room(edge.target) == BENCH}
    bench_tests = {
        module
        for module in tree
        if module.rsplit(".", 1)[-1].startswith(("test_bench", "test_soak"))
    }
    assert importers <= bench_tests, sorted(importers - bench_tests)


def test_no_module_in_services_is_longer_than_600_lines() -> None:
    lengths = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in SERVICES.rglob("*.py")
    }
    assert long_modules(lengths) == []


# -- the checks bite --------------------------------------------------------------------
MADE_UP = {
    "services.receiver.settings": ("from services.webhooks.signing import secret_bytes", False),
    "services.partner.psi": ("from services.alignment.partner import OfferPolicy", False),
    "services.kernel.crypto.x": ("from ...intake import service", False),
    "services.alignment.bank": ("import services.training.trainer", False),
    "services.stack.pipeline": ("from services.demo import dataset", False),
    "services.prescreen": ("from . import joiner\nfrom ..kernel import ids", True),
    "services.demo.run": ("def f() -> None:\n    from services.bench import cli", False),
    "services.commands": ("def f() -> None:\n    from services.bench import cli", False),
    "services.evaluate.run": ("from services import bench", False),
}


def test_the_checks_catch_a_made_up_violation_of_each_rule() -> None:
    found = edges(MADE_UP)
    assert sorted(role_violations(found)) == [
        "services.alignment.bank imports services.training.trainer",
        "services.kernel.crypto.x imports services.intake",
        "services.receiver.settings imports services.webhooks.signing",
        "services.stack.pipeline imports services.demo",
    ]
    assert sorted(bench_importers(found)) == [
        "services.commands",
        "services.demo.run",
        "services.evaluate.run",
    ]
    assert bench_importers(found)["services.evaluate.run"][0].top_level
    assert not bench_importers(found)["services.commands"][0].top_level
    assert long_modules({"services/a.py": 601, "services/b.py": 600}) == [
        "services/a.py: 601 lines"
    ]
