"""The prover's configuration: config.toml, then SOLVENCY_<KEY>, then the
command line, converted to one msgspec schema; errors naming the key and
where it came from; the rules across keys; the JSON Schema in docs/."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import (
    CONFIG_FILE,
    AssetConfig,
    AttesterConfig,
    Config,
    Settings,
    WitnessConfig,
    json_schema,
    load_config,
)
from prover.errors import ConfigError
from verifier.checkpoint import verifier_key_for
from verifier.cosignature import witness_key_for

SCHEMA_FILE = Path(__file__).parent.parent.parent / "docs" / "config.schema.json"
REGENERATE = (
    ".venv/bin/python -c 'import sys; from prover.config import json_schema;"
    " sys.stdout.buffer.write(json_schema())' > docs/config.schema.json"
)
COLD = verifier_key_for(
    "cold", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key()
)
W1 = witness_key_for("w1", Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34))).public_key())


def write(data_dir: Path, text: str) -> Path:
    path = data_dir / CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path


def refusal(data_dir: Path, env: dict[str, str], overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(data_dir, overrides, env)
    return str(caught.value)


def test_the_file_then_the_environment_then_the_command_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        'host = "10.0.0.1"\nport = 1000\nepoch_interval = 0.5\n'
        '[[assets]]\nid = "BTC"\ndecimals = 8\n',
    )
    env = {
        "SOLVENCY_PORT": "2000",
        "SOLVENCY_MAX_INTERVAL": "20",
        "SOLVENCY_ASSETS": "ETH:18,USDT:6",
        "SOLVENCY_ATTESTERS": str(COLD),
        "SOLVENCY_WITNESSES": f"{W1}@http://127.0.0.1:7380",
        "SOLVENCY_DATA_DIR": "/elsewhere",  # not a key: the directory is load_config's argument
    }
    config = load_config(tmp_path, {"port": 3000, "host": None}, env)
    assert (config.host, config.port, config.epoch_interval) == ("10.0.0.1", 3000, 0.5)
    assert config.max_interval == 20.0 and isinstance(config.max_interval, float)
    assert config.assets == (AssetConfig("ETH", 18), AssetConfig("USDT", 6))
    assert config.attesters == (AttesterConfig("cold", str(COLD)),)
    assert config.witnesses == (WitnessConfig(str(W1), "http://127.0.0.1:7380"),)
    assert config.data_dir == tmp_path and config.key_path == tmp_path / "signing.key"
    assert load_config(tmp_path, environ={"SOLVENCY_ASSETS": ""}).assets == ()


def test_table_entries_are_typed_values(tmp_path: Path) -> None:
    config = Config(
        tmp_path,
        assets=(AssetConfig("BTC", 8),),
        attesters=(AttesterConfig("cold", str(COLD)),),
        witnesses=(WitnessConfig(str(W1), "http://127.0.0.1:7380"),),
    )
    [asset], [attester], [witness] = config.assets, config.attesters, config.witnesses
    assert (asset.id, asset.decimals, attester.source, attester.key) == (
        "BTC",
        8,
        "cold",
        str(COLD),
    )
    assert (witness.key, witness.url) == (str(W1), "http://127.0.0.1:7380")
    assert config.attester_keys() == {"cold": (COLD,)} and config.quorum == 1


@pytest.mark.parametrize(
    ("text", "env", "problem"),
    [
        ("port = 70000\n", {}, "{file}: port: Expected `int` <= 65535"),
        ('port = "x"\n', {}, "{file}: port: Expected `int`, got `str`"),
        ("colour = 1\n", {}, "{file}: colour: unknown key"),
        ('data_dir = "/x"\n', {}, "{file}: data_dir: unknown key"),
        ("port = 1\n", {"SOLVENCY_PORT": "70000"}, "SOLVENCY_PORT: port: Expected `int` <= 65535"),
        ("", {"SOLVENCY_PORT": "abc"}, "SOLVENCY_PORT: port: Expected `int`, got `str`"),
        ("", {"SOLVENCY_MAX_RESERVE_AGE": "nan"}, "SOLVENCY_MAX_RESERVE_AGE: max_reserve_age:"),
        ("", {"SOLVENCY_NATS_ACK_WAIT": "0.5"}, "SOLVENCY_NATS_ACK_WAIT: nats_ack_wait:"),
        ('proof_secret = "zz"\n', {}, "{file}: proof_secret: Expected `str` matching regex"),
        ("witness_timeout = 0\n", {}, "{file}: witness_timeout: Expected `float` > 0.0"),
        ("subscriber_buffer_bytes = 10\n", {}, "{file}: subscriber_buffer_bytes:"),
        (
            '[[assets]]\nid = "BTC"\ndecimals = 40\n',
            {},
            "{file}: assets[0].decimals: Expected `int` <= 36",
        ),
        ('[[assets]]\nid = "BTC"\n', {}, "{file}: assets[0].decimals: missing"),
        (
            '[[witnesses]]\nkey = "k"\nurl = "http://a"\nname = "w1"\n',
            {},
            "{file}: witnesses[0].name: unknown key",
        ),
        (
            "",
            {"SOLVENCY_ASSETS": "BTC:8,ETH:x"},
            "SOLVENCY_ASSETS: assets[1].decimals: Expected `int`, got `str`",
        ),
        ("", {"SOLVENCY_ASSETS": "BTC"}, "SOLVENCY_ASSETS: 'BTC' is not id:decimals"),
        ("", {"SOLVENCY_WITNESSES": "no-at-sign"}, "SOLVENCY_WITNESSES: 'no-at-sign' is not"),
    ],
)
def test_a_refusal_names_the_key_and_where_it_came_from(
    tmp_path: Path, text: str, env: dict[str, str], problem: str
) -> None:
    path = write(tmp_path, text)
    assert refusal(tmp_path, env).startswith(problem.format(file=path))


def test_a_command_line_value_is_named_as_such(tmp_path: Path) -> None:
    assert refusal(tmp_path, {}, {"port": 0}) == "command line: port: Expected `int` >= 1"


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "port = \n")
    assert refusal(tmp_path, {}).startswith(f"{path}: Invalid value")
    path.write_bytes(b'origin = "\xff"\n')
    assert refusal(tmp_path, {}).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epoch_interval = 20\n", "need 0.05 <= epoch_interval <= max_interval"),
        ("max_interval = 100000\n", "salt_period must be at least max_interval"),
        ('origin = "https://x"\n', "origin 'https://x': no scheme"),
        ('auditor_tokens = "a:short"\n', "auditor_tokens: 'a': want name:token"),
        ('[[assets]]\nid = "btc"\ndecimals = 8\n', "assets[0]: invalid asset id 'btc'"),
        ('[[attesters]]\nsource = "hot"\nkey = "' + str(COLD) + '"\n', "attester hot: its key"),
        (
            f'witness_quorum = 2\n[[witnesses]]\nkey = "{W1}"\nurl = "http://a"\n',
            "witness_quorum 2: want 0..1",
        ),
        ('nats_url = "nats://n:4222"\n', "nats_stream '': name the JetStream stream"),
    ],
)
def test_rules_across_keys_keep_their_messages(tmp_path: Path, text: str, problem: str) -> None:
    write(tmp_path, text)
    assert refusal(tmp_path, {}).startswith(problem)


def test_a_config_made_directly_holds_to_the_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^port: Expected `int` >= 1$"):
        Config(tmp_path, port=0)
    with pytest.raises(ConfigError, match=r"^assets\[0\]\.decimals: Expected `int` <= 36$"):
        Config(tmp_path, assets=(AssetConfig("BTC", 37),))
    with pytest.raises(ConfigError, match=r"^assets\[0\]: Expected `object`, got `array`$"):
        Config(tmp_path, assets=(("BTC", 8),))  # type: ignore[arg-type]
    config = Config(tmp_path, assets=(AssetConfig("BTC", 8),))
    moved = msgspec.structs.replace(config, port=9000)
    assert (moved.port, moved.assets) == (9000, config.assets)
    with pytest.raises(ConfigError, match=r"^witness_timeout: "):
        msgspec.structs.replace(config, witness_timeout=0.0)
    with pytest.raises(ConfigError, match=r"need 0\.05 <= epoch_interval"):
        msgspec.structs.replace(config, epoch_interval=11.0)


def test_the_json_schema_in_docs_is_the_schema() -> None:
    assert SCHEMA_FILE.read_bytes() == json_schema(), f"stale: regenerate it with {REGENERATE}"
    schema = json.loads(SCHEMA_FILE.read_text())
    definitions = schema["$defs"]
    top = definitions[schema["$ref"].rsplit("/", 1)[1]]
    assert list(top["properties"]) == list(Settings.__struct_fields__)  # no data_dir
    assert top["required"] == []  # every key has a default
    assert top["properties"]["port"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
        "default": 8765,
    }
    assert {name: d["additionalProperties"] for name, d in definitions.items()} == {
        "Settings": False,
        "AssetConfig": False,
        "AttesterConfig": False,
        "WitnessConfig": False,
    }
    assert definitions["AssetConfig"]["required"] == ["id", "decimals"]
