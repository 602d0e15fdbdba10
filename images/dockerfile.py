"""The runtime settings a Dockerfile gives its image, read from the Dockerfile itself.

The local build takes Entrypoint, Cmd, Env, User, WorkingDir and exposed ports from the same
Dockerfile a Docker engine builds, and the project files its top layer installs from the
Dockerfile's COPY lines, so the two routes cannot drift apart. Only the final stage counts, and
only the forms our Dockerfiles use: JSON (exec) form ENTRYPOINT/CMD, ``ENV k=v`` (several per
line, line continuations), literal values without ``$`` expansion, ``COPY <paths in the build
context> <dest>`` without flags or wildcards. Anything else is an error naming the line, not a
silent guess.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


class DockerfileError(ValueError):
    pass


@dataclass
class Settings:
    base: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)  # in the order first set
    user: str | None = None
    workdir: str = "/"
    expose: list[str] = field(default_factory=list)  # "8080/tcp"
    copied: list[str] = field(default_factory=list)  # COPY sources: paths in the build context


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with comments dropped and continuations joined."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        out.append((start, " ".join(part.strip() for part in buf if part.strip())))
        buf = []
    if buf:
        out.append((start, " ".join(buf)))
    return out


def _exec_form(where: str, args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise DockerfileError(f"{where}: only the JSON (exec) form is supported, got {args!r}")
    return value


def _copy_sources(where: str, args: str) -> list[str]:
    """The build-context paths of one COPY line (the last word is the destination)."""
    words = shlex.split(args)
    if not words or words[0].startswith(("--", "[")) or len(words) < 2:
        raise DockerfileError(f"{where}: only `COPY <source>... <destination>` is supported: {args!r}")
    sources = words[:-1]
    for source in sources:
        parts = posixpath.normpath(source).split("/")
        if any(c in source for c in "$*?[") or source.startswith("/") or ".." in parts or parts == ["."]:
            raise DockerfileError(f"{where}: COPY source {source!r} must name a path inside the context")
    return [posixpath.normpath(source) for source in sources]


def parse(path: Path) -> Settings:
    """The final stage's runtime settings of the Dockerfile at ``path``."""
    settings = Settings()
    for number, line in _logical_lines(path.read_text()):
        where = f"{path}:{number}"
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            # A new stage starts from its base image's settings, which are not ours to know.
            settings = Settings(base=[word for word in args.split() if not word.startswith("--")][0])
        elif instruction in ("ENTRYPOINT", "CMD", "ENV", "USER", "WORKDIR", "EXPOSE") and "$" in args:
            raise DockerfileError(f"{where}: variable expansion is not supported: {line!r}")
        elif instruction == "ENTRYPOINT":
            settings.entrypoint = _exec_form(where, args)
            settings.cmd = None  # Docker resets CMD when ENTRYPOINT is set
        elif instruction == "CMD":
            settings.cmd = _exec_form(where, args)
        elif instruction == "ENV":
            for word in shlex.split(args):
                key, eq, value = word.partition("=")
                if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise DockerfileError(f"{where}: ENV takes KEY=value words, got {word!r}")
                settings.env[key] = value
        elif instruction == "USER":
            settings.user = args
        elif instruction == "WORKDIR":
            settings.workdir = posixpath.normpath(posixpath.join(settings.workdir, args))
        elif instruction == "EXPOSE":
            settings.expose += [p if "/" in p else f"{p}/tcp" for p in args.split()]
        elif instruction == "ADD":
            raise DockerfileError(f"{where}: use COPY (ADD fetches and unpacks): {line!r}")
        elif instruction == "COPY":
            settings.copied += _copy_sources(where, args)
    if not settings.base:
        raise DockerfileError(f"{path}: no FROM line")
    return settings
