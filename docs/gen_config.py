"""Print every environment variable the services read, as Markdown tables.

Reads the pydantic-settings classes themselves, so the output cannot drift from the
code. Used to produce the tables in docs/configuration.md:

    python docs/gen_config.py            # from the repository root, with fedscreen installed
"""

from __future__ import annotations

import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.intake.settings import IntakeSettings  # noqa: E402
from services.kernel.config import KafkaSettings  # noqa: E402
from services.kernel.logs import LogSettings  # noqa: E402
from services.partner.settings import PartnerSettings  # noqa: E402
from services.prescreen.settings import PrescreenSettings  # noqa: E402
from services.receiver.settings import ReceiverSettings  # noqa: E402
from services.webhooks.settings import WebhooksSettings  # noqa: E402

CLASSES: list[tuple[type[BaseSettings], str]] = [
    (KafkaSettings, "services/kernel/config.py"),
    (LogSettings, "services/kernel/logs.py"),
    (IntakeSettings, "services/intake/settings.py"),
    (PartnerSettings, "services/partner/settings.py"),
    (PrescreenSettings, "services/prescreen/settings.py"),
    (WebhooksSettings, "services/webhooks/settings.py"),
    (ReceiverSettings, "services/receiver/settings.py"),
]


def type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(arg).replace("'", '"') for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return annotation.__name__
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, str) and value == "":
        return '`""` (empty)'
    return f"`{value}`"


def constraints(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
        min_length = getattr(item, "min_length", None)
        if min_length:
            parts.append(f"length >= {min_length}")
    return ", ".join(parts)


def table(cls: type[BaseSettings], source: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = [
        f"### `{cls.__name__}` (`{prefix}*`, [`{source}`](../{source}))",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, field in cls.model_fields.items():
        description = (
            (field.description or "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        )
        limits = constraints(field)
        if limits:
            description = f"{description} ({limits})" if description else f"({limits})"
        lines.append(
            f"| `{prefix}{name.upper()}` | {type_name(field.annotation)} | "
            f"{default_text(field)} | {description} |"
        )
    return "\n".join(lines)


BEGIN = "<!-- BEGIN GENERATED: python docs/gen_config.py --write -->"
END = "<!-- END GENERATED -->"
DOC = ROOT / "docs" / "configuration.md"


def render() -> str:
    return "\n\n".join(table(cls, source) for cls, source in CLASSES)


def document_with(generated: str, text: str) -> str:
    """``text`` with the part between the markers replaced by ``generated``."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{generated}\n\n{END}{tail}"


def main() -> None:
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(document_with(render(), DOC.read_text()))
    else:
        print(render())


if __name__ == "__main__":
    main()
