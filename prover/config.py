"""Prover configuration: config.toml in the data directory, then environment
variables ``SOLVENCY_<KEY>``, then command-line flags, each overriding the last.

Every key of ``Config`` may appear in config.toml at top level; ``[[assets]]``
tables list the assets (``id``, ``decimals``); ``[[attesters]]`` tables the
reserve sources that sign their reports (``source``, ``key``: its verifier
key, named as the source; docs/PROTOCOL.md §13), in the environment
``SOLVENCY_ATTESTERS="<vkey>,<vkey>"`` (each key's name is its source);
``[[witnesses]]`` tables the witnesses that cosign the checkpoints (``key``:
the witness's cosignature/v1 key, ``url``: its submission prefix), in the
environment ``SOLVENCY_WITNESSES="<key>@<url>,<key>@<url>"`` (PROTOCOL §12.4).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prover.auth import auditor_table
from prover.errors import ConfigError
from prover.witness_protocol import WitnessEndpoint
from verifier.checkpoint import VerifierKey
from verifier.errors import FormatError
from verifier.hashing import check_asset_id

__all__ = ["CONFIG_FILE", "Config", "check_origin", "load_config"]

CONFIG_FILE = "config.toml"
MAX_ORIGIN = 255
_NATS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # streams and consumers: no '.', '*', '>'
_NATS_SUBJECT = re.compile(r"[!-~]+")  # printable ASCII, no space; wildcards allowed


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


@dataclass(frozen=True)
class Config:
    """Everything the daemon reads at start. Durations are in seconds."""

    data_dir: Path
    origin: str = "localhost/solvency"
    database_url: str = ""  # empty: sqlite file prover.db in the data directory
    host: str = "127.0.0.1"
    port: int = 8765
    key_file: str = "signing.key"
    previous_key_file: str = ""  # after rotate-key: keeps co-signing until removed
    key_passphrase: str = ""
    ingest_token: str = ""  # bearer token producers present on /ingest
    admin_token: str = ""  # bearer token for /admin/export; none: refused to everyone
    export_dir: str = ""  # where exports go; empty: exports/ in the data directory
    proof_secret: str = ""  # hex; a user's token is HMAC-SHA256(proof_secret, user id)
    epoch_interval: float = 1.0
    max_interval: float = 10.0
    max_reserve_age: float = 300.0
    max_reserve_skew: float = 5.0
    salt_period: float = 86_400.0
    max_subscribers: int = 1000  # anonymous /roots subscribers
    max_anonymous_per_address: int = 16  # anonymous /roots subscribers per source address
    auditor_tokens: str = ""  # "name:token,name:token": /roots slots of their own
    auditor_slots: int = 16
    max_connections: int = 0  # 0: subscribers + auditor slots + 64, within RLIMIT_NOFILE
    subscriber_queue: int = 64  # epochs queued for an in-process subscriber (engine.subscribe)
    subscriber_buffer_bytes: int = 256 << 10  # unsent to one subscriber: shed (1013) past it
    proof_epochs: int = 60  # earlier epochs whose proofs /proof still serves
    proof_memory_mb: int = 512  # at most this much memory for them
    max_message_bytes: int = 16 << 20
    assets: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    attesters: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (source, vkey)
    witnesses: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (witness key, url)
    witness_quorum: int = -1  # cosignatures an epoch's publication waits for; -1: all witnesses
    witness_timeout: float = 1.0  # at most this long after its commit
    nats_url: str = ""  # NATS server(s), "nats://host:4222[,nats://...]"; empty: no NATS source
    nats_stream: str = ""  # the JetStream stream holding the ingest messages
    nats_subject: str = ""  # the consumer's filter subject; empty: all of the stream's
    nats_durable: str = "solvency-prover"  # the durable pull consumer, created or updated
    nats_ack_wait: float = 30.0  # an unacknowledged message is delivered again after this

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
        for source, text in self.attesters:
            keys[source] = (*keys.get(source, ()), VerifierKey.parse(text))
        return keys

    def witness_endpoints(self) -> tuple[WitnessEndpoint, ...]:
        """The configured witnesses, in order."""
        return tuple(WitnessEndpoint.parse(key, url) for key, url in self.witnesses)

    @property
    def quorum(self) -> int:
        """How many witnesses' cosignatures an epoch's publication waits for."""
        return len(self.witnesses) if self.witness_quorum < 0 else self.witness_quorum

    @property
    def key_path(self) -> Path:
        return self.data_dir / self.key_file

    @property
    def export_path(self) -> Path:
        """The directory exports are written under (relative: to the data directory)."""
        return self.data_dir / (self.export_dir or "exports")

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if not 0.05 <= self.epoch_interval <= self.max_interval:
            raise ConfigError("need 0.05 <= epoch_interval <= max_interval")
        if self.salt_period < self.max_interval:
            raise ConfigError("salt_period must be at least max_interval")
        if not 0 <= self.proof_epochs <= 100_000:
            raise ConfigError("proof_epochs must be 0..100000")
        if not 0 <= self.proof_memory_mb <= 1 << 20:
            raise ConfigError("proof_memory_mb must be 0..1048576")
        if min(self.max_anonymous_per_address, self.auditor_slots, self.max_connections) < 0:
            raise ConfigError("connection limits must not be negative")
        if self.subscriber_buffer_bytes < 4096:
            raise ConfigError("subscriber_buffer_bytes must be at least 4096")
        auditor_table(self.auditor_tokens)
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} out of range")
        if self.proof_secret:
            try:
                bytes.fromhex(self.proof_secret)
            except ValueError:
                raise ConfigError("proof_secret must be hex") from None
        for asset, decimals in self.assets:
            try:
                check_asset_id(asset)
            except FormatError as exc:
                raise ConfigError(str(exc)) from None
            if not 0 <= decimals <= 36:
                raise ConfigError(f"asset {asset}: decimals must be 0..36")
        for source, text in self.attesters:
            try:
                key = VerifierKey.parse(text)
            except FormatError as exc:
                raise ConfigError(f"attester {source}: {exc}") from None
            if key.name != source:
                raise ConfigError(f"attester {source}: its key is named {key.name!r}")
        self._check_witnesses()
        self._check_nats()

    def _check_witnesses(self) -> None:
        seen: set[tuple[str, int]] = set()
        for i, (key, url) in enumerate(self.witnesses):
            try:
                endpoint = WitnessEndpoint.parse(key, url)
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
        if not 0 < self.witness_timeout <= 60:
            raise ConfigError("witness_timeout must be in (0, 60] seconds")

    def _check_nats(self) -> None:
        if not self.nats_url:
            return
        if not _NATS_NAME.fullmatch(self.nats_stream):
            raise ConfigError(
                f"nats_stream {self.nats_stream!r}: name the JetStream stream"
                " (letters, digits, '-', '_')"
            )
        if not _NATS_NAME.fullmatch(self.nats_durable):
            raise ConfigError(f"nats_durable {self.nats_durable!r}: letters, digits, '-', '_'")
        if self.nats_subject and not _NATS_SUBJECT.fullmatch(self.nats_subject):
            raise ConfigError(f"nats_subject {self.nats_subject!r} is not a subject")
        if not 1 <= self.nats_ack_wait <= 3600:
            raise ConfigError("nats_ack_wait must be 1..3600 seconds")


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Convert a TOML, environment or flag value to the field's type."""
    try:
        if name == "assets":
            if isinstance(raw, str):  # environment: "BTC:8,ETH:18"
                raw = [
                    dict(zip(("id", "decimals"), p.split(":"), strict=True)) for p in raw.split(",")
                ]
            return tuple((str(a["id"]), int(a["decimals"])) for a in raw)
        if name == "attesters":
            if isinstance(raw, str):  # environment: "<vkey>,<vkey>", named as their sources
                raw = [{"source": k.split("+", 1)[0], "key": k} for k in raw.split(",") if k]
            return tuple((str(a["source"]), str(a["key"])) for a in raw)
        if name == "witnesses":
            if isinstance(raw, str):  # environment: "<key>@<url>,<key>@<url>"
                pairs = [w.split("@", 1) for w in raw.split(",") if w]
                raw = [dict(zip(("key", "url"), pair, strict=True)) for pair in pairs]
            return tuple((str(w["key"]), str(w["url"])) for w in raw)
        if name == "data_dir":
            return Path(raw)
        return {"int": int, "float": float, "str": str}[kind](raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{name}: invalid value {raw!r} ({exc})") from None


def load_config(
    data_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read ``data_dir/config.toml``, then ``SOLVENCY_*`` variables, then ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = data_dir / CONFIG_FILE
    if path.exists():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    known = {f.name: f.type for f in fields(Config)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    for name in known:
        if f"SOLVENCY_{name.upper()}" in env:
            values[name] = env[f"SOLVENCY_{name.upper()}"]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["data_dir"] = data_dir
    coerced = {k: _coerce(k, v, known[k]) for k, v in values.items()}
    return dataclasses.replace(Config(data_dir), **coerced)
