"""Reads the README's curl walkthrough as a list of steps a test can replay.

The walkthrough is written for people: ``$ curl ...`` commands, ``$ export
NAME=<field>`` lines that say which field of the previous answer to keep, and
a sentence "Answer ``NNN``" after each command.  This module turns that text
into ``Step`` objects, so the test replays exactly what the README shows.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

_SECTION = re.compile(r"^Walkthrough\n-+\n(?P<body>.*?)^\S[^\n]*\n-+\n", re.S | re.M)
_COMMAND = re.compile(r"^\s+\$ (?P<command>.+)$", re.M)
_ANSWER = re.compile(r"Answer ``(?P<status>\d{3})``")
_EXPORT_FIELD = re.compile(r"(?P<name>[A-Z_]+)=<(?P<field>[a-z_]+)>")


@dataclasses.dataclass
class Step:
    """One command of the walkthrough."""

    command: str
    #: for ``curl`` commands, the status the README promises
    status: int | None = None
    #: for ``export`` lines: variable name -> field of the previous JSON answer
    exports: dict[str, str] = dataclasses.field(default_factory=dict)


def walkthrough_steps(readme: Path) -> list[Step]:
    """The steps of the README's Walkthrough section, in order."""
    match = _SECTION.search(readme.read_text())
    if match is None:
        raise ValueError("README has no Walkthrough section")
    body = match.group("body")
    steps: list[Step] = []
    commands = list(_COMMAND.finditer(body))
    for index, found in enumerate(commands):
        command = found.group("command").strip()
        if command.startswith("export "):
            exports = {m.group("name"): m.group("field") for m in _EXPORT_FIELD.finditer(command)}
            steps.append(Step(command=command, exports=exports))
            continue
        following = body[found.end(): commands[index + 1].start() if index + 1 < len(commands) else len(body)]
        answer = _ANSWER.search(following)
        if answer is None:
            raise ValueError("no 'Answer ``NNN``' after README command: %s" % (command,))
        steps.append(Step(command=command, status=int(answer.group("status"))))
    return steps
