"""Prover configuration: config.toml in the data directory, then environment
variables ``SOLVENCY_<KEY>``, then command-line flags, each overriding the last.

``Settings`` is the one schema of the keys, their types and ranges declared
as msgspec constraints; docs/config.schema.json is its JSON Schema. The
merged values are converted to it by msgspec (environment strings become
numbers there), and a ``ConfigError`` names the key and where it came from:
``<dir>/config.toml: port: Expected `int` <= 65535``. ``Config`` is the
settings of one data directory; the rules across keys (and the keys that must
parse) are checked whenever one is made.

Every key of ``Settings`` may appear in config.toml at top level, and no
other; ``[[assets]]`` tables list the assets (``id``, ``decimals``), in the
environment ``SOLVENCY_ASSETS="BTC:8,ETH:18"``; ``[[attesters]]`` tables the
reserve sources that sign their reports (``source``, ``key``: its verifier
key, named as the source; docs/PROTOCOL.md §13), in the environment
``SOLVENCY_ATTESTERS="<vkey>,<vkey>"`` (each key's name is its source);
``[[witnesses]]`` tables the witnesses that cosign the checkpoints (``key``:
the witness's cosignature/v1 key, ``url``: its submission prefix), in the
environment ``SOLVENCY_WITNESSES="<key>@<url>,<key>@<url>"`` (PROTOCOL §12.4).

``role`` says what ``solvency-prover run`` runs (docs/SCALING.md, "Roles"):
``single``, the daemon; or one process of a sharded prover, ``front-end``,
``shard`` (part ``shard`` of ``2**shard_bits``) or ``coordinator``, all of
one deployment sharing the routing key file, the NATS servers (``nats_url``)
of the ledger stream (``ledger_*``) and a PostgreSQL database: a SQLite file
cannot be shared by processes on several machines, and is refused.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from prover.auth import auditor_table
from prover.errors import ConfigError
from prover.witness_protocol import WitnessEndpoint
from verifier.checkpoint import VerifierKey
from verifier.errors import FormatError
from verifier.hashing import check_asset_id

__all__ = [
    "CONFIG_FILE",
    "ROLES",
    "AssetConfig",
    "AttesterConfig",
    "Config",
    "Settings",
    "WitnessConfig",
    "check_origin",
    "json_schema",
    "load_config",
]

CONFIG_FILE = "config.toml"
_COMMAND_LINE = "command line"  # where load_config's overrides come from, in its errors
MAX_ORIGIN = 255
_NATS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # streams and consumers: no '.', '*', '>'
_NATS_SUBJECT = re.compile(r"[!-~]+")  # printable ASCII, no space; wildcards allowed
Role = Literal["single", "front-end", "shard", "coordinator"]
ROLES: Final[tuple[str, ...]] = get_args(Role)  # what ``run`` may run
_FIELD_PROBLEM = re.compile(r"Object (contains unknown|missing required) field `([^`]*)`")
# SOLVENCY_<KEY> of a list of tables: the separator in each item, and the fields it separates
_ENVIRONMENT_TABLES = {"assets": (":", ("id", "decimals")), "witnesses": ("@", ("key", "url"))}


def check_origin(origin: str) -> None:
    """A log origin is a C2SP schema-less URL, the signed-note key name: 1-255
    printable ASCII characters, no space, no ``+``, no ``scheme://``."""
    if not 1 <= len(origin) <= MAX_ORIGIN:
        raise ConfigError(f"origin must be 1-{MAX_ORIGIN} characters, got {len(origin)}")
    bad = next((c for c in origin if not "!" <= c <= "~" or c == "+"), None)
    if bad is not None:
        raise ConfigError(
            f"origin {origin!r}: {bad!r} is not allowed (printable ASCII without spaces or '+')"
        )
    if "://" in origin:
        raise ConfigError(f"origin {origin!r}: no scheme: e.g. example.com/solvency")


class AssetConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """An ``[[assets]]`` table: an asset proven."""

    id: str  # checked by verifier.hashing.check_asset_id, its one definition
    decimals: Annotated[int, Meta(ge=0, le=36)]


class AttesterConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """An ``[[attesters]]`` table: a reserve source and a verifier key its
    reports are signed with, named as the source."""

    source: str
    key: str


class WitnessConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """A ``[[witnesses]]`` table: a witness's cosignature/v1 key and its
    submission prefix."""

    key: str
    url: str


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keys of config.toml, with their types, ranges and defaults.
    Durations are in seconds."""

    origin: str = "localhost/solvency"
    database_url: str = ""  # empty: sqlite file prover.db in the data directory
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8765
    key_file: str = "signing.key"
    previous_key_file: str = ""  # after rotate-key: keeps co-signing until removed
    key_passphrase: str = ""
    ingest_token: str = ""  # bearer token producers present on /ingest
    admin_token: str = ""  # bearer token for /admin/export; none: refused to everyone
    export_dir: str = ""  # where exports go; empty: exports/ in the data directory
    # hex; a user's token is HMAC-SHA256(proof_secret, user id)
    proof_secret: Annotated[str, Meta(pattern="^(?:[0-9a-fA-F]{2})*$")] = ""
    epoch_interval: Annotated[float, Meta(ge=0.05)] = 1.0  # at most max_interval
    max_interval: float = 10.0
    max_reserve_age: Annotated[float, Meta(ge=0)] = 300.0
    max_reserve_skew: Annotated[float, Meta(ge=0)] = 5.0
    salt_period: float = 86_400.0  # at least max_interval
    max_subscribers: int = 1000  # anonymous /roots subscribers
    # anonymous /roots subscribers per source address
    max_anonymous_per_address: Annotated[int, Meta(ge=0)] = 16
    auditor_tokens: str = ""  # "name:token,name:token": /roots slots of their own
    auditor_slots: Annotated[int, Meta(ge=0)] = 16
    # 0: subscribers + auditor slots + 64, within RLIMIT_NOFILE
    max_connections: Annotated[int, Meta(ge=0)] = 0
    subscriber_queue: int = 64  # epochs queued for an in-process subscriber (engine.subscribe)
    # unsent to one subscriber: shed (1013) past it
    subscriber_buffer_bytes: Annotated[int, Meta(ge=4096)] = 256 << 10
    # earlier epochs whose proofs /proof still serves, and at most this much memory for them
    proof_epochs: Annotated[int, Meta(ge=0, le=100_000)] = 60
    proof_memory_mb: Annotated[int, Meta(ge=0, le=1 << 20)] = 512
    max_message_bytes: int = 16 << 20
    assets: tuple[AssetConfig, ...] = ()
    attesters: tuple[AttesterConfig, ...] = ()
    witnesses: tuple[WitnessConfig, ...] = ()
    # cosignatures an epoch's publication waits for, at most the witnesses; -1: all of them
    witness_quorum: int = -1
    witness_timeout: Annotated[float, Meta(gt=0, le=60)] = 1.0  # at most this long after commit
    nats_url: str = ""  # NATS server(s), "nats://host:4222[,nats://...]"; empty: no NATS source
    nats_stream: str = ""  # the JetStream stream holding the ingest messages
    nats_subject: str = ""  # the consumer's filter subject; empty: all of the stream's
    nats_durable: str = "solvency-prover"  # the durable pull consumer, created or updated
    # an unacknowledged message is delivered again after this
    nats_ack_wait: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    # processes holding the sum trees, the assets dealt among them (prover/pool.py)
    tree_workers: Annotated[int, Meta(ge=1, le=64)] = 1
    # web origins ("https://host[:port]") whose pages may call /proof and /roots
    cors_origins: tuple[
        Annotated[str, Meta(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")], ...
    ] = ()
    # what `run` runs: the daemon (single), or a process of a sharded prover (docs/SCALING.md)
    role: Role = "single"
    # a sharded prover's trees are in 2**shard_bits parts, one per shard; the daemon ignores it
    shard_bits: Annotated[int, Meta(ge=0, le=8)] = 0
    shard: Annotated[int, Meta(ge=-1, le=255)] = -1  # role shard: this process's part; -1: none
    # 32 random bytes in hex, made by init, the same for every process of a deployment
    routing_key_file: str = "routing.key"
    # the JetStream stream of accepted batches, its subjects' prefix, and how it is made
    ledger_stream: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$")] = "ledger"
    ledger_prefix: Annotated[
        str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=128)
    ] = "ledger"
    ledger_replicas: Annotated[int, Meta(ge=1, le=5)] = 1  # 3 on a 3-node cluster
    ledger_duplicate_window: Annotated[float, Meta(ge=1, le=86_400)] = 120.0
    # the coordinator's name as the log's lease holder; empty: <hostname>:<pid>
    coordinator_name: Annotated[str, Meta(max_length=128)] = ""
    # the coordinator's lease of the log, renewed at each epoch, lasts this long; then a
    # standby may take over. At least twice max_interval
    lease_ttl: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    # how long the coordinator waits for a shard's answer, and a shard for NATS's (each request)
    shard_timeout: Annotated[float, Meta(ge=1, le=60)] = 5.0
    # role shard: the port of its /healthz and /metrics (on host); 0: none
    shard_port: Annotated[int, Meta(ge=0, le=65535)] = 0


class Config(Settings, frozen=True):
    """The settings of the data directory ``data_dir``. However it is made
    (load_config, directly, msgspec.structs.replace) it holds to the schema
    of ``Settings`` and to the rules across keys, else ConfigError."""

    data_dir: Path

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'prover.db'}"

    @property
    def passphrase(self) -> bytes | None:
        """The signing key's passphrase as bytes; None when there is none."""
        return self.key_passphrase.encode() if self.key_passphrase else None

    def attester_keys(self) -> dict[str, tuple[VerifierKey, ...]]:
        """Each attested source's verifier keys (several while one is replaced)."""
        keys: dict[str, tuple[VerifierKey, ...]] = {}
        for attester in self.attesters:
            source = attester.source
            keys[source] = (*keys.get(source, ()), VerifierKey.parse(attester.key))
        return keys

    def witness_endpoints(self) -> tuple[WitnessEndpoint, ...]:
        """The configured witnesses, in order."""
        return tuple(WitnessEndpoint.parse(w.key, w.url) for w in self.witnesses)

    @property
    def quorum(self) -> int:
        """How many witnesses' cosignatures an epoch's publication waits for."""
        return len(self.witnesses) if self.witness_quorum < 0 else self.witness_quorum

    @property
    def key_path(self) -> Path:
        return self.data_dir / self.key_file

    @property
    def routing_key_path(self) -> Path:
        """The routing key file (relative: to the data directory)."""
        return self.data_dir / self.routing_key_file

    @property
    def sqlite(self) -> bool:
        """True when the database is a SQLite file (the default)."""
        return self.url.partition(":")[0].partition("+")[0].lower() == "sqlite"

    @property
    def export_path(self) -> Path:
        """The directory exports are written under (relative: to the data directory)."""
        return self.data_dir / (self.export_dir or "exports")

    def __post_init__(self) -> None:
        # every field against the schema (again after load_config's conversion:
        # a Config made directly or by replace is checked too), then the rules
        fields = {name: getattr(self, name) for name in Settings.__struct_fields__}
        try:
            msgspec.convert(msgspec.to_builtins(fields), Settings)
        except msgspec.ValidationError as exc:
            raise _config_error(exc, {}) from None
        check_origin(self.origin)
        if self.epoch_interval > self.max_interval:
            raise ConfigError("need 0.05 <= epoch_interval <= max_interval")
        if self.salt_period < self.max_interval:
            raise ConfigError("salt_period must be at least max_interval")
        auditor_table(self.auditor_tokens)
        for i, asset in enumerate(self.assets):
            try:
                check_asset_id(asset.id)
            except FormatError as exc:
                raise ConfigError(f"assets[{i}]: {exc}") from None
        for attester in self.attesters:
            try:
                key = VerifierKey.parse(attester.key)
            except FormatError as exc:
                raise ConfigError(f"attester {attester.source}: {exc}") from None
            if key.name != attester.source:
                raise ConfigError(f"attester {attester.source}: its key is named {key.name!r}")
        self._check_witnesses()
        self._check_nats()
        self._check_role()

    def _check_witnesses(self) -> None:
        seen: set[tuple[str, int]] = set()
        for i, witness in enumerate(self.witnesses):
            try:
                endpoint = WitnessEndpoint.parse(witness.key, witness.url)
            except FormatError as exc:
                raise ConfigError(f"witnesses[{i}]: {exc}") from None
            if (endpoint.key.name, endpoint.key.key_id) in seen:
                raise ConfigError(f"witnesses[{i}]: witness {endpoint.name} is configured twice")
            seen.add((endpoint.key.name, endpoint.key.key_id))
        if not -1 <= self.witness_quorum <= len(self.witnesses):
            raise ConfigError(
                f"witness_quorum {self.witness_quorum}: want 0..{len(self.witnesses)}"
                " (the witnesses configured), or -1 for all of them"
            )

    def _check_nats(self) -> None:
        if not self.nats_url or self.role != "single":  # a sharded prover's: the ledger stream
            return
        if not _NATS_NAME.fullmatch(self.nats_stream):
            raise ConfigError(
                f"nats_stream {self.nats_stream!r}: name the JetStream stream"
                " (letters, digits, '-', '_') the daemon consumes; for a sharded prover's"
                " process, set its role (e.g. --role coordinator)"
            )
        if not _NATS_NAME.fullmatch(self.nats_durable):
            raise ConfigError(f"nats_durable {self.nats_durable!r}: letters, digits, '-', '_'")
        if self.nats_subject and not _NATS_SUBJECT.fullmatch(self.nats_subject):
            raise ConfigError(f"nats_subject {self.nats_subject!r} is not a subject")

    def _check_role(self) -> None:
        role = self.role
        if role == "single":
            return
        if not self.nats_url:
            raise ConfigError(f"role {role} needs nats_url: the NATS servers of the ledger stream")
        if role == "shard" and not 0 <= self.shard < 1 << self.shard_bits:
            raise ConfigError(
                f"role shard needs shard, this process's part: 0..{(1 << self.shard_bits) - 1}"
                f" (shard_bits {self.shard_bits}), got {self.shard}"
            )
        if role == "coordinator" and self.lease_ttl < 2 * self.max_interval:
            raise ConfigError(
                f"lease_ttl {self.lease_ttl:g} s: at least twice max_interval"
                f" ({2 * self.max_interval:g} s), as the coordinator renews its lease at each epoch"
            )
        if role != "front-end" and self.sqlite:  # a front-end opens no database
            raise ConfigError(
                f"role {role} needs a PostgreSQL database_url: the processes of a sharded"
                " prover share one database, which a SQLite file cannot be"
            )


def json_schema() -> bytes:
    """The JSON Schema of config.toml (its tables as JSON objects), as
    docs/config.schema.json holds it."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **msgspec.json.schema(Settings),
    }
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def _config_error(exc: msgspec.ValidationError, origins: Mapping[str, str]) -> ConfigError:
    """msgspec's ``<problem> - at `$.<path>``` as ``<origin>: <path>: <problem>``,
    the origin being where the path's top-level key came from, when known."""
    problem, _, path = str(exc).partition(" - at `$")
    path = path.removesuffix("`").removeprefix(".")
    field = _FIELD_PROBLEM.fullmatch(problem)
    if field is not None:  # name the field itself: "assets[0].decimals: missing"
        path = f"{path}.{field.group(2)}" if path else field.group(2)
        problem = "unknown key" if field.group(1) == "contains unknown" else "missing"
    origin = origins.get(re.split(r"[.\[]", path, maxsplit=1)[0])  # of "assets" in "assets[0].id"
    return ConfigError(": ".join(part for part in (origin, path, problem) if part))


def _from_environment(name: str, variable: str, text: str) -> Any:
    """``SOLVENCY_<KEY>``'s text in the shape of the key in config.toml: a
    list of tables from its one-line form; other keys' text as it is."""
    items = [item for item in text.split(",") if item]
    if name == "attesters":  # "<vkey>,<vkey>", named as their sources
        return [{"source": key.split("+", 1)[0], "key": key} for key in items]
    if name == "cors_origins":  # "https://a.example,https://b.example"
        return items
    if name not in _ENVIRONMENT_TABLES:
        return text
    separator, names = _ENVIRONMENT_TABLES[name]
    tables = []
    for item in items:
        first, found, second = item.partition(separator)
        if not found:
            raise ConfigError(f"{variable}: {item!r} is not {names[0]}{separator}{names[1]}")
        tables.append(dict(zip(names, (first, second), strict=True)))
    return tables


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_config(
    data_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read ``data_dir/config.toml``, then ``SOLVENCY_*`` variables, then
    ``overrides`` (the command line's; None: not given), and convert them to
    the schema.

    Raises:
        ConfigError: a file that cannot be read or parsed, an unknown key, a
            value of the wrong type or out of range (naming the key and the
            file or variable it came from), or a rule across keys broken.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    path = data_dir / CONFIG_FILE
    if path.exists():
        values.update(_read_file(path))
        origins.update(dict.fromkeys(values, str(path)))
    for name in Settings.__struct_fields__:
        variable = f"SOLVENCY_{name.upper()}"
        if variable in env:
            values[name] = _from_environment(name, variable, env[variable])
            origins[name] = variable
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            origins[name] = _COMMAND_LINE
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, origins) from None
    return Config(data_dir, **msgspec.structs.asdict(settings))
