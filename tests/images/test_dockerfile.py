"""The Dockerfile reader, and the image contract both Dockerfiles state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from images.build import BASE_ENV, IMAGES, image_config
from images.dockerfile import DockerfileError, parse

ROOT = Path(__file__).resolve().parents[2]

# The contract of each image, written out once here: the Dockerfiles must state it and the
# locally built images must carry it (tests/images/test_built_images.py).
CONTRACT = {
    "operator": {
        "entrypoint": ["finetune-operator"],
        "cmd": None,
        "user": "1000:1000",
        "workdir": "/",
        "env": {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        "expose": ["8080/tcp", "8081/tcp"],
    },
    "trainer": {
        "entrypoint": ["finetune-train"],
        "cmd": None,
        "user": "1000:1000",
        "workdir": "/tmp",
        # HOME on the writable /tmp: the root file system may be read-only.
        "env": {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
        "expose": [],
    },
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_each_dockerfile_states_the_contract(name):
    settings = parse(ROOT / "images" / name / "Dockerfile")
    want = CONTRACT[name]
    assert settings.entrypoint == want["entrypoint"]
    assert settings.cmd == want["cmd"]
    assert settings.user == want["user"]
    assert settings.workdir == want["workdir"]
    assert settings.expose == want["expose"]
    for key, value in want["env"].items():
        assert settings.env.get(key) == value, f"{name}: ENV {key}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_local_image_config_is_the_dockerfiles_on_the_debian_base(name):
    path = IMAGES[name].dockerfile
    settings = parse(path)
    config = image_config(path)
    env = dict(item.split("=", 1) for item in config.env)
    assert env == {**BASE_ENV, **settings.env}
    assert config.entrypoint == settings.entrypoint and config.cmd == settings.cmd
    assert config.user == settings.user and config.working_dir == settings.workdir
    assert config.exposed_ports == settings.expose


def test_operator_dockerfile_prunes_what_the_local_build_prunes():
    text = IMAGES["operator"].dockerfile.read_text()
    for rel in IMAGES["operator"].prune:
        assert f"site-packages/{rel}" in text, (
            f"the operator Dockerfile keeps {rel}, the local build removes it"
        )


def test_parse_final_stage_continuations_and_forms(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# comment\n"
        "FROM builder:1 AS build\n"
        'ENTRYPOINT ["no"]\n'
        "ENV X=1\n"
        "COPY not-this ./\n"
        "FROM --platform=linux/amd64 debian:12\n"
        "ENV A=1 \\\n"
        "    # a comment inside\n"
        '    B="two words" \\\n'
        "    C=\n"
        "WORKDIR /srv\n"
        "WORKDIR app/../data\n"
        "EXPOSE 80 53/udp\n"
        'CMD ["--before"]\n'
        'ENTRYPOINT ["prog", "x"]\n'
        'CMD ["--after"]\n'
        "USER 7:8\n"
        "COPY pyproject.toml README.md ./\n"
        "COPY contract/ ./contract\n"
        "COPY a/./b \\\n  /dest\n"
    )
    settings = parse(path)
    assert settings.base == "debian:12"
    assert settings.env == {"A": "1", "B": "two words", "C": ""}
    assert settings.workdir == "/srv/data"
    assert settings.expose == ["80/tcp", "53/udp"]
    assert settings.entrypoint == ["prog", "x"] and settings.cmd == ["--after"]
    assert settings.user == "7:8"
    assert settings.copied == ["pyproject.toml", "README.md", "contract", "a/b"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ENTRYPOINT finetune-train --x", "JSON (exec) form"),
        ('CMD ["a", 1]', "JSON (exec) form"),
        ("ENV HOME=$TMPDIR", "variable expansion"),
        ("ENV HOME /tmp", "KEY=value"),
        ("ADD https://example.com/x /x", "use COPY"),
        ("COPY --from=build /src /src", "only `COPY <source>... <destination>`"),
        ("COPY --chown=1000 src /src", "only `COPY <source>... <destination>`"),
        ('COPY ["a", "/b"]', "only `COPY <source>... <destination>`"),
        ("COPY src", "only `COPY <source>... <destination>`"),
        ("COPY *.toml /src/", "inside the context"),
        ("COPY ../secrets /src/", "inside the context"),
        ("COPY /etc/passwd /src/", "inside the context"),
        ("COPY . /src/", "inside the context"),
    ],
)
def test_unsupported_forms_are_errors_naming_the_line(tmp_path, line, words):
    path = tmp_path / "Dockerfile"
    path.write_text(f"FROM x:1\n{line}\n")
    with pytest.raises(DockerfileError, match=re.escape(words)) as info:
        parse(path)
    assert f"{path}:2" in str(info.value)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_each_dockerfile_copies_the_project_files_the_contract_and_only_its_own_program(name):
    """What the local build's top layer takes (project.source_files over these paths)."""
    assert parse(IMAGES[name].dockerfile).copied == ["pyproject.toml", "README.md", "contract", name]


def test_no_from_is_an_error(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text('ENTRYPOINT ["x"]\n')
    with pytest.raises(DockerfileError, match="no FROM"):
        parse(path)
