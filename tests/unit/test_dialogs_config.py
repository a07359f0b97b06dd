import pytest

from dialogs.config import Settings
from servicekit.config import ConfigError

VALID = {
    "DIALOGS_DATABASE_URL": "postgresql://dialogs@127.0.0.1:5432/dialogs",
    "DIALOGS_INTERNAL_TOKEN": "0123456789abcdef",
}


def test_a_multi_host_url_following_the_primary_is_accepted() -> None:
    url = "postgresql://u:p@10.0.0.1:5432,10.0.0.2:5432/dialogs?target_session_attrs=read-write"
    assert Settings.from_env(VALID | {"DIALOGS_DATABASE_URL": url}).database_url == url


def test_minimal_environment_gives_documented_defaults() -> None:
    settings = Settings.from_env(VALID)
    assert settings.port == 8081
    assert settings.max_text_length == 4096
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"DIALOGS_DATABASE_URL": ""}, "DIALOGS_DATABASE_URL"),
        ({"DIALOGS_DATABASE_URL": "mysql://x"}, "DIALOGS_DATABASE_URL"),
        (
            {"DIALOGS_DATABASE_URL": "postgresql://u@h1,h2/d?target_session_attrs=master"},
            "DIALOGS_DATABASE_URL: target_session_attrs must be one of",
        ),
        ({"DIALOGS_INTERNAL_TOKEN": ""}, "DIALOGS_INTERNAL_TOKEN"),
        ({"DIALOGS_INTERNAL_TOKEN": "short"}, "DIALOGS_INTERNAL_TOKEN"),
        ({"DIALOGS_PORT": "http"}, "DIALOGS_PORT"),
        ({"DIALOGS_PORT": "70000"}, "DIALOGS_PORT"),
        ({"DIALOGS_WORKERS": "0"}, "DIALOGS_WORKERS"),
        ({"DIALOGS_MAX_TEXT_LENGTH": "10001"}, "DIALOGS_MAX_TEXT_LENGTH"),
        ({"DIALOGS_STATEMENT_TIMEOUT_MS": "-1"}, "DIALOGS_STATEMENT_TIMEOUT_MS"),
        ({"DIALOGS_CONNECT_TIMEOUT_S": "soon"}, "DIALOGS_CONNECT_TIMEOUT_S"),
        ({"DIALOGS_LOG_LEVEL": "LOUD"}, "DIALOGS_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(overrides: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(VALID | overrides)


def test_missing_database_url_is_reported() -> None:
    with pytest.raises(ConfigError, match="DIALOGS_DATABASE_URL is required"):
        Settings.from_env({"DIALOGS_INTERNAL_TOKEN": "0123456789abcdef"})
