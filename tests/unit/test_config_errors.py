"""Bad configuration is refused with one error naming what was wrong and where: the config
file, a credentials file, the environment (docs/configuration.md). Through ``config.load``, the
function `taskhub serve` calls; the CLI's one-line rendering is tested in test_cli_ready.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskhub import config
from taskhub.errors import InvalidOption


def load_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "taskhub.toml"
    path.write_text(text)
    config.load(path, env={})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[bogus]\n", "unknown section(s) ['bogus']; known: server, credentials"),
        ("[server]\nport = '8080'\n", "[server] port has the wrong type: '8080'"),
        ("[server]\nport = true\n", "[server] port has the wrong type: True"),
        ("[server]\nprot = 1\n", "[server] has an unknown setting 'prot'; known:"),
        ("credentials = ['x']\n", "[[credentials]] #1 must be a table/object, not str"),
        ("[[credentials]]\nnmae = 'a'\n", "unknown key(s) ['nmae']; known:"),
        ("[[credentials]]\nkey = 'k'\n", "[[credentials]] #1 has no name (a string)"),
        ("[[credentials]]\nname = 'a'\nkey = 1\n", "[[credentials]] #1 (a): key must be a string"),
        (
            "[[credentials]]\nname = 'a'\nsub_permissions = 'email'\n",
            "(a): sub_permissions must be a list of strings",
        ),
        (
            "[[credentials]]\nname = 'a'\nmax_connections = true\n",
            "(a): max_connections must be an integer",
        ),
        (
            "[[credentials]]\nname = 'a'\nkey = 'k'\n[[credentials]]\nname = 'a'\nkey = 'j'\n",
            "credential 'a' is given twice",
        ),
        ("[[actions]]\ntimeout = 5\n", "[[actions]] #1 has no name (the action)"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_culprit(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(InvalidOption) as err:
        load_toml(tmp_path, text)
    assert says in str(err.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match=r"config file '.*nope\.toml' does not exist"):
        config.load(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[server]\nport = 1\n", "unknown section(s) ['server']; it holds only [[credentials]]"),
        ("credentials = 'a'\n", "credentials must be [[credentials]] tables"),
        ("[[credentials]\n", "is not valid TOML"),
    ],
)
def test_a_bad_credentials_file_is_refused_naming_it(tmp_path: Path, text: str, says: str) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(text)
    with pytest.raises(InvalidOption) as err:
        config.load(env={}, credentials_file=secrets)
    assert f"credentials file {str(secrets)!r}" in str(err.value)
    assert says in str(err.value)


def test_a_credentials_file_that_is_missing_or_unreadable_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match=r"secrets\.toml' does not exist"):
        config.load(env={}, credentials_file=tmp_path / "secrets.toml")
    with pytest.raises(InvalidOption, match=r"credentials file .*: Is a directory"):
        config.load(env={}, credentials_file=tmp_path)


def test_credentials_from_the_environment_one_object_or_a_list() -> None:
    one = '{"name": "web", "key": "s3cret", "pub_permissions": ["email"]}'
    assert config.load(env={}).registry.open_access  # no credentials: loopback, open
    assert not config.load(env={"TASKHUB_CREDENTIALS": one}).registry.open_access
    with pytest.raises(InvalidOption, match="must be a JSON list of credential objects") as err:
        config.load(env={"TASKHUB_CREDENTIALS": '"s3cret"'})
    assert "s3cret" not in str(err.value)  # the value holds keys: never echoed


def test_a_number_setting_from_the_environment_must_be_a_number() -> None:
    with pytest.raises(InvalidOption, match="TASKHUB_PORT='eighty' is not a number"):
        config.load(env={"TASKHUB_PORT": "eighty"})
