"""docs/operations.md, "Running the services by hand", runs as written.

The page's bash blocks (between its script markers) are taken from the doc, not copied
here, and run as one script with bash in a fresh directory outside the repository,
with ``fedscreen`` on PATH. The only change is the one the page asks the reader to
make: ``DATA=`` points at the bundled data set. The script splits the data, starts the
broker, makes every party's keys, aligns ids with both partners, loads and starts both
partners, trains, starts the bank's services and a campaign tool, sends candidates and
reads the decisions back. The test then checks that every candidate it sent was
decided exactly once and every release was delivered, and stops whatever the script
left running (its whole process group).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
DATA = ROOT / "data" / "UCI_Credit_Card.csv"
SECTION = "## Running the services by hand"
START = "<!-- by-hand script:"
END = "<!-- end of the by-hand script -->"
SCRIPT_TIMEOUT_S = 480.0
STOP_GRACE_S = 15.0
# Settings the page must set itself: none may leak in from the environment running the tests.
SERVICE_PREFIXES = (
    "KAFKA_",
    "FEDSCREEN_",
    "INTAKE_",
    "PARTNER_",
    "PRESCREEN_",
    "WEBHOOKS_",
    "RECEIVER_",
)


def page_script() -> str:
    """The section's bash blocks between the script markers, in order, as one script."""
    text = DOC.read_text()
    assert SECTION + "\n" in text, f"{DOC} has no section {SECTION!r}"
    section = text[text.index(SECTION + "\n") + len(SECTION) :]
    following = section.find("\n## ")
    section = section if following < 0 else section[:following]
    assert START in section and END in section, f"the section lacks {START!r} … {END!r}"
    script = section[section.index(START) : section.index(END)]
    blocks = re.findall(r"^```bash\n(.*?)^```[ \t]*$", script, flags=re.DOTALL | re.MULTILINE)
    assert blocks, "no bash block between the markers"
    return "\n".join(blocks)


def with_data_path(script: str, data: Path) -> str:
    """The page's one substitution: ``DATA=`` set to the data set's path."""
    lines = script.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("DATA=")]
    assert len(at) == 1, f"expected one DATA= line on the page, found {len(at)}"
    lines[at[0]] = f"DATA={shlex.quote(str(data))}"
    return "\n".join(lines) + "\n"


def option(script: str, command: str, name: str) -> str:
    """The value of ``name`` on the page's ``fedscreen <command>`` line."""
    for line in script.splitlines():
        if f"fedscreen {command} " in line and name in line:
            found = re.search(rf"{re.escape(name)}[ =](\S+)", line)
            if found:
                return found.group(1)
    raise AssertionError(f"no `fedscreen {command} … {name} …` on the page")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_PREFIXES)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the installed `fedscreen`, not the checkout on sys.path
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    return True


def stop_group(pgid: int) -> None:
    """SIGTERM to everything the script started, SIGKILL to whatever outlives the grace."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(pgid):
            return
        os.killpg(pgid, signum)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)


def diagnostics(workdir: Path, output: Path) -> str:
    """The script's output and the end of every service log, for a failure message."""
    parts = [f"--- script output ({output}) ---", tail(output, 40)]
    for log in sorted((workdir / "logs").glob("*.log")):
        parts += [f"--- {log.name} ---", tail(log, 15)]
    return "\n".join(parts)


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read: {exc.strerror})"


def json_lines(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_ids(path: Path, rows: int, id_column: str = "ID") -> list[str]:
    with path.open(newline="") as handle:
        return [row[id_column] for row in itertools.islice(csv.DictReader(handle), rows)]


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 120)
def test_the_by_hand_page_runs_as_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("by-hand")
    assert ROOT not in workdir.parents, "the run must happen outside the repository"
    script_text = page_script()
    script = tmp_path_factory.mktemp("by-hand-script") / "page.sh"
    script.write_text(with_data_path(script_text, DATA))
    output = script.with_name("output.txt")
    started = time.monotonic()
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", str(script)],
            cwd=workdir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: every service it starts
        )
        try:
            code: int | None = process.wait(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_group(process.pid)
            process.wait()
    print(f"the by-hand page ran for {time.monotonic() - started:.0f}s")
    if code != 0:
        why = "timed out" if code is None else f"exited with {code}"
        pytest.fail(f"the page's script {why}\n{diagnostics(workdir, output)}")

    campaign = option(script_text, "candidates send", "--campaign")
    rows = int(option(script_text, "candidates send", "--rows"))
    csv_path = workdir / option(script_text, "candidates send", "--csv")
    sent = {f"ev-{campaign}-{customer}" for customer in first_ids(csv_path, rows)}
    assert len(sent) == rows

    decisions = json_lines(workdir / "decisions.jsonl")
    decided = [str(d["event_id"]) for d in decisions]
    problems = []
    if set(decided) != sent:
        problems.append(
            f"{len(sent - set(decided))} sent candidates undecided, "
            f"{len(set(decided) - sent)} decisions for candidates never sent"
        )
    if len(decided) != len(set(decided)):
        problems.append(f"{len(decided) - len(set(decided))} candidates listed twice")
    released = {str(d["decision_id"]) for d in decisions if d["outcome"] == "released"}
    delivered = {str(line["webhook_id"]) for line in json_lines(workdir / "deliveries.jsonl")}
    if not released:
        problems.append("no candidate was released, so no delivery was checked")
    if not released <= delivered:
        problems.append(f"{len(released - delivered)} releases not delivered")
    assert not problems, "; ".join(problems) + "\n" + diagnostics(workdir, output)
