"""Settings: typed, frozen, BYPASS_ prefix, secrets never printed, exact for child processes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from streams.cli import cli, main
from streams.settings import Settings


def test_secrets_and_url_passwords_never_reach_printed_or_dumped_settings(monkeypatch) -> None:
    monkeypatch.setenv("BYPASS_REDIS_URL", "redis://u:topsecret1@h:1/0")
    monkeypatch.setenv("BYPASS_CLICKHOUSE_URL", "http://default:topsecret2@h:8123")
    monkeypatch.setenv("BYPASS_KAFKA_SASL_PASSWORD", "topsecret3")
    monkeypatch.setenv("BYPASS_PHONE_HASH_KEY", "topsecret4")
    s = Settings()
    printed = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), str(s.masked())]
    printed.append(CliRunner().invoke(cli, ["settings"]).output)
    for text in printed:
        for secret in ("topsecret1", "topsecret2", "topsecret3", "topsecret4"):
            assert secret not in text
    assert s.masked()["BYPASS_REDIS_URL"] == "redis://u:****@h:1/0"


def test_to_env_gives_a_child_process_the_exact_settings(monkeypatch) -> None:
    monkeypatch.setenv("BYPASS_REDIS_URL", "redis://u:pw@h:1/0")
    monkeypatch.setenv("BYPASS_PHONE_HASH_KEY", "k3y")
    monkeypatch.setenv("BYPASS_RAW_TOPICS", "a, b")
    s = Settings()
    env = s.to_env()
    for name in list(env):
        monkeypatch.setenv(name, env[name])
    again = Settings()
    assert again == s
    assert again.raw_topics == ("a", "b")
    assert again.require_phone_hash_key() == b"k3y"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka_bootstrap = "elsewhere:9092"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BYPASS_KAFKA_SECURITY_PROTOCOL", "FOO"),
        ("BYPASS_LOG_LEVEL", "LOUD"),
        ("BYPASS_TABLE_STORE", "rocksdict://"),
        ("BYPASS_TOPIC_PARTITIONS", "0"),
    ],
)
def test_a_bad_setting_is_a_one_line_error_naming_the_variable(monkeypatch, capsys, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["settings"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: invalid setting {name}:" in err
    assert "Traceback" not in err


def test_secrets_in_urls_are_masked_however_they_are_written() -> None:
    """Before: a password in the query string, or one holding an unencoded '/', printed in clear."""
    from streams.settings import Settings, mask_url

    assert mask_url("redis://:pa/ss@h:6379/0") == "redis://:****@h:6379/0"
    assert mask_url("http://default:p@ss@h:8123/db") == "http://default:****@h:8123/db"
    assert mask_url("http://h:8123/?user=a&password=x") == "http://h:8123/?user=a&password=****"
    assert mask_url("http://h:8123/?token=abc#x") == "http://h:8123/?token=****#x"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    s = Settings(redis_url="redis://:pa/ss@h:6379/0", clickhouse_url="http://h:8123/?password=sekrit")
    printed = " ".join([repr(s), str(s.masked()), s.model_dump_json()])
    assert "pa/ss" not in printed and "sekrit" not in printed
