"""Config loading: the file, flag overrides, and every malformed input refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowband.gateway.config import Config, ConfigError, RateLimits, load_config, parse_listen
from lowband.gateway.homeserver.sync import SyncToken
from lowband.gateway.matrix.errors import MatrixError

FULL = """
[server]
server_name = "gw.example"
data_dir = "/var/lib/lowband"

[http]
listen = "0.0.0.0:8448"
max_request_bytes = 2048
header_timeout_s = 12
body_timeout_s = 7.5
min_body_bytes_per_s = 300

[registration]
enabled = true

[media]
max_upload_bytes = 1000
quota_bytes_per_user = 5000

[rate_limits]
enabled = true
per_user_per_s = 2.5
per_user_burst = 5
per_ip_per_s = 7
per_ip_burst = 9
reads_per_user_per_s = 3
reads_per_user_burst = 4
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "lowband.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_defaults_need_no_file():
    config = load_config(None)
    assert config == Config()
    assert config.registration_enabled is False and config.rate_limits.enabled


def test_every_key_of_the_file(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.server_name == "gw.example" and config.data_dir == Path("/var/lib/lowband")
    assert (config.http_host, config.http_port, config.max_request_bytes) == ("0.0.0.0", 8448, 2048)
    assert config.registration_enabled and config.max_upload_bytes == 1000
    assert config.rate_limits == RateLimits(True, 2.5, 5, 7, 9, 3, 4)
    assert (config.header_timeout_s, config.body_timeout_s, config.min_body_bytes_per_s) == (12, 7.5, 300)
    assert config.media_quota_bytes == 5000


def test_flags_override_the_file(tmp_path):
    config = load_config(write(tmp_path, FULL), server_name="other.example", data_dir="/tmp/x", http_port=1)
    assert (config.server_name, config.data_dir, config.http_port) == ("other.example", Path("/tmp/x"), 1)
    assert load_config(write(tmp_path, FULL), registration_enabled=None).registration_enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\nserver_name = 1", "not valid TOML"),
        ('[surprise]\nx = 1', "unknown config section"),
        ('[server]\nname = "x"', "unknown config key server.name"),
        ("[server]\nserver_name = 5", "wrong type"),
        ('[server]\nserver_name = "bad name!"', "not a valid Matrix server name"),
        ('[http]\nlisten = "8008"', "HOST:PORT"),
        ('[http]\nlisten = "host:99999"', "HOST:PORT"),
        ("[http]\nmax_request_bytes = -1", "positive"),
        ('[registration]\nenabled = "yes"', "wrong type"),
        ("[media]\nmax_upload_bytes = true", "boolean"),
        ("[rate_limits]\nper_user_per_s = 0", "positive"),
        ("[rate_limits]\nreads_per_user_per_s = nan", "positive finite"),
        ("[rate_limits]\nreads_per_user_burst = 0", "positive"),
        ("[http]\nheader_timeout_s = inf", "positive finite"),
        ("[http]\nbody_timeout_s = nan", "positive finite"),
        ('[http]\nbody_timeout_s = "30"', "wrong type"),
        ("[http]\nmin_body_bytes_per_s = 0.5", "wrong type"),
        ("[media]\nquota_bytes_per_user = 0", "positive"),
        ('[rate_limits]\nper_user_burst = 1.5', "wrong type"),
        ("[rate_limits]\nunknown = 1", "unknown config key rate_limits.unknown"),
        ("server = 3", "must be a table"),
        ("[database]\nurl = 5", "wrong type"),
        ('[database]\nurl = "mysql://db/x"', "must be a postgresql:// URL"),
        ('[database]\nurl = "postgresql://h/db?schema=Bad-Name"', "lower-case letters"),
        ('[database]\nurl = "postgresql://h/db?schema=x;drop"', "lower-case letters"),
        ('[database]\nurl = "postgresql://h/db\\n"', "must be a postgresql:// URL"),
        ('[database]\nurl = "postgresql://' + "h" * 1200 + '"', "must be a postgresql:// URL"),
        ('[database]\nhost = "x"', "unknown config key database.host"),
    ],
)
def test_malformed_files_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_unreadable_truncated_binary_and_huge_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, FULL[: len(FULL) // 2 - 3]))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, b"\xff\xfe\x00garbage"))
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "[server]\nserver_name = \"" + "a" * 300 + "\""))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_config_or_a_config_error(tmp_path_factory, text):
    path = write(tmp_path_factory.mktemp("cfg"), text)
    try:
        load_config(path)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["server", "http", "registration", "media", "rate_limits"]),
                       st.dictionaries(st.sampled_from(["server_name", "data_dir", "listen", "enabled", "max_upload_bytes",
                                                        "per_user_per_s", "per_ip_burst", "max_request_bytes"]),
                                       st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.booleans()),
                                       max_size=4), max_size=5))  # fmt: skip
def test_hostile_values_in_known_keys(tmp_path_factory, doc):
    import tomllib  # noqa: F401  (the writer below needs only repr-compatible values)

    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            rendered = ("true" if value else "false") if isinstance(value, bool) else repr(value) if not isinstance(value, str) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {rendered}")
    path = write(tmp_path_factory.mktemp("cfg"), "\n".join(lines))
    try:
        load_config(path)
    except ConfigError:
        pass


@pytest.mark.parametrize("listen", ["[::1]:8008", "localhost:0", "127.0.0.1:65535"])
def test_listen_addresses(listen):
    host, port = parse_listen(listen)
    assert host and 0 <= port <= 65535


@pytest.mark.parametrize("token", ["", "s", "x1", "s1_2_3", "s-1", "s1_", "s" + "9" * 30, "s1_a"])
def test_bad_sync_tokens_are_invalid_param(token):
    with pytest.raises(MatrixError) as info:
        SyncToken.parse(token)
    assert info.value.errcode == "M_INVALID_PARAM"


def test_sync_token_round_trip():
    assert SyncToken.parse(str(SyncToken(12, 34))) == SyncToken(12, 34)
    assert SyncToken.parse("s7") == SyncToken(7, 0)


def test_database_url_picks_postgresql_and_sqlite_means_the_default(tmp_path):
    url = "postgresql://gw:secret@db.example:5432/matrix?schema=gw1"
    assert load_config(write(tmp_path, f'[database]\nurl = "{url}"')).database_url == url
    assert load_config(write(tmp_path, '[database]\nurl = "sqlite:"')).database_url is None
    assert load_config(None).database_url is None
