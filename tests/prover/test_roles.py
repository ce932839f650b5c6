"""``solvency-prover run --role R``: the sharded prover's roles as processes
(prover/shards/roles.py), configured as the daemon is.

Without servers: the settings' rules (SQLite refused to a role that opens
the database, a shard's part, NATS needed), the routing key ``init`` makes
and the roles read, ``--role`` dispatching. With the real NATS server at
127.0.0.1:4222 (a stream and prefix of the test's own, deleted after) and
PostgreSQL (``SOLVENCY_TEST_POSTGRES_URL``, a fresh schema): a coordinator,
two shards and a front-end in processes of their own; a producer sends
reserves and balances to the front-end, ``solvency-verify watch`` verifies
epochs from the coordinator, the last record holds every balance sent, a
proof fetched with ``solvency-prover proof`` verifies, and each process
exits 0 soon after SIGTERM. A shard waiting for the first salt period stops
on SIGTERM too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import connect

from prover.cli import main as prover_main
from prover.config import ROLES, Config, load_config
from prover.errors import ConfigError
from prover.initdir import write_routing_key
from prover.keys import load_key
from prover.shards.roles import load_router, stream_spec
from storage.store import Store
from tests.databases import POSTGRES_URL, SKIP_PG, postgres_schema_url
from tests.prover.daemon import wait_healthy
from tests.prover.test_frontend import NATS, Names, names  # noqa: F401 (fixture)
from verifier.checkpoint import verifier_key_for
from verifier.cli import main as verify_main
from verifier.record import EpochRecord

ASSETS = ("BTC", "ETH")
STOP_DEADLINE = 20.0  # seconds each process has to exit after SIGTERM


def init(data: Path, *flags: str) -> None:
    assert prover_main(["--data-dir", str(data), *flags, "init", "--assets", "BTC:8,ETH:8"]) == 0


def add_settings(data: Path, settings: dict[str, object]) -> None:
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    with open(data / "config.toml", encoding="utf-8") as f:
        text = f.read()
    head, found, tables = text.partition("[[")  # top-level keys before the tables
    (data / "config.toml").write_text(head + "\n".join(lines) + "\n\n" + found + tables)


# settings and the routing key, without servers


def test_roles_are_the_documented_ones() -> None:
    assert ROLES == ("single", "front-end", "shard", "coordinator")


def test_a_role_that_opens_the_database_refuses_sqlite(tmp_path: Path) -> None:
    for role in ("shard", "coordinator"):
        with pytest.raises(ConfigError, match="SQLite file cannot be"):
            Config(data_dir=tmp_path, role=role, nats_url=NATS, shard=0)
    Config(data_dir=tmp_path, role="front-end", nats_url=NATS)  # a front-end opens none
    Config(data_dir=tmp_path)  # single: the default


def test_the_rules_of_the_role_settings(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://prover@db/solvency"
    with pytest.raises(ConfigError, match="role front-end needs nats_url"):
        Config(data_dir=tmp_path, role="front-end")
    with pytest.raises(
        ConfigError, match=r"role shard needs shard.*0\.\.3 \(shard_bits 2\), got 4"
    ):
        Config(
            data_dir=tmp_path, role="shard", shard_bits=2, shard=4, nats_url=NATS, database_url=pg
        )
    with pytest.raises(ConfigError, match="got -1"):  # none given
        Config(data_dir=tmp_path, role="shard", nats_url=NATS, database_url=pg)
    shard = Config(
        data_dir=tmp_path, role="shard", shard_bits=2, shard=3, nats_url=NATS, database_url=pg
    )
    assert shard.nats_stream == ""  # the daemon's NATS source is not this role's
    with pytest.raises(ConfigError, match="nats_stream"):  # but the daemon's still is
        Config(data_dir=tmp_path, nats_url=NATS)
    with pytest.raises(ConfigError, match="lease_ttl 10 s: at least twice max_interval"):
        Config(data_dir=tmp_path, role="coordinator", nats_url=NATS, database_url=pg, lease_ttl=10)
    for key, value in [
        ("shard_bits", 9),
        ("ledger_stream", "a.b"),
        ("ledger_prefix", "ledger.*"),
        ("ledger_prefix", "ledger."),
        ("ledger_replicas", 0),
        ("ledger_duplicate_window", 0.5),
        ("role", "leader"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            Config(data_dir=tmp_path, **{key: value})  # type: ignore[arg-type]


def test_role_settings_from_the_environment_and_the_command_line(tmp_path: Path) -> None:
    environ = {
        "SOLVENCY_ROLE": "shard",
        "SOLVENCY_SHARD": "1",
        "SOLVENCY_SHARD_BITS": "1",
        "SOLVENCY_NATS_URL": NATS,
        "SOLVENCY_DATABASE_URL": "postgresql+psycopg://prover@db/solvency",
        "SOLVENCY_LEDGER_REPLICAS": "3",
    }
    config = load_config(tmp_path, environ=environ)
    assert (config.role, config.shard, config.shard_bits) == ("shard", 1, 1)
    assert stream_spec(config).replicas == 3
    moved = load_config(tmp_path, {"role": "front-end"}, environ=environ)
    assert moved.role == "front-end"


def test_init_makes_a_private_routing_key_the_roles_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init(data)
    path = data / "routing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert len(bytes.fromhex(text.strip())) == 32 and text.endswith("\n")
    config = msgspec.structs.replace(load_config(data, environ={}), shard_bits=2)
    router = load_router(config)
    assert (router.key.hex(), router.parts) == (text.strip(), 4)
    with pytest.raises(ConfigError, match="never replaced"):
        write_routing_key(path)
    assert path.read_text() == text
    other = tmp_path / "other"
    init(other)  # each deployment its own
    assert (other / "routing.key").read_text() != text


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "no routing key .* init makes one"), ("abcd\n", "want 32 bytes"), ("zz" * 32, "hex")],
)
def test_a_missing_or_bad_routing_key_is_refused(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "routing.key").write_text(content)
    with pytest.raises(ConfigError, match=problem):
        load_router(Config(data_dir=tmp_path))


def test_run_refuses_a_routing_key_others_can_read_and_sqlite_for_a_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init(data)
    add_settings(data, {"nats_url": NATS, "shard": 0})
    capsys.readouterr()
    assert prover_main(["--data-dir", str(data), "run", "--role", "shard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: role shard needs a PostgreSQL database_url"), err
    assert "SQLite" in err
    (data / "routing.key").chmod(0o644)
    assert prover_main(["--data-dir", str(data), "--role", "front-end", "run"]) == 2
    assert "routing.key is open to group or others" in capsys.readouterr().err


# processes, on NATS and PostgreSQL


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip(SKIP_PG)
    with postgres_schema_url() as url:
        yield url


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Role:
    """One ``solvency-prover run --role R`` process, its log in a file."""

    def __init__(self, data: Path, role: str, log: Path, port: int = 0, shard: int = -1) -> None:
        """``port``: the role's listener (a shard's ``shard_port``)."""
        self.name, self.log = role if shard < 0 else f"shard {shard}", log
        args = [sys.executable, "-m", "prover.cli", "--data-dir", str(data)]
        env = {**os.environ, "SOLVENCY_SHARD": str(shard)}
        if port and shard >= 0:
            env["SOLVENCY_SHARD_PORT"] = str(port)
        elif port:
            args += ["--port", str(port)]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [*args, "run", "--role", role, "--json-logs"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def terminate(roles: list[Role]) -> dict[str, tuple[int | None, float]]:
    """SIGTERM to every process at once; each one's exit status and seconds
    to exit (None: still running at the deadline, then killed)."""
    started = time.monotonic()
    for role in roles:
        if role.proc.poll() is None:
            role.proc.send_signal(signal.SIGTERM)
    exits: dict[str, tuple[int | None, float]] = {}
    while len(exits) < len(roles) and time.monotonic() < started + STOP_DEADLINE:
        for role in roles:
            if role.name not in exits and (status := role.proc.poll()) is not None:
                exits[role.name] = (status, time.monotonic() - started)
        time.sleep(0.02)
    for role in roles:
        if role.name not in exits:
            role.proc.kill()
            role.proc.wait()
            exits[role.name] = (None, time.monotonic() - started)
    return exits


def balance_batches(count: int, size: int) -> list[dict[str, object]]:
    """Balance messages of one source: users come, change and leave (0)."""
    out: list[dict[str, object]] = []
    seq = 0
    for b in range(count):
        updates = []
        for k in range(size):
            n = (b * 37 + k * 11) % 300
            amount = 0 if (b + k) % 9 == 0 else n + b + 1
            updates.append(
                {"seq": seq, "user": f"user{n}", "asset": ASSETS[n % 2], "amount": amount}
            )
            seq += 1
        out.append({"type": "balances", "id": b, "source": "core", "updates": updates})
    return out


async def produce(port: int, token: str, batches: list[dict[str, object]]) -> int:
    """Reserves, then ``batches``, each acknowledged; the last commit's stream sequence."""
    headers = {"Authorization": f"Bearer {token}"}
    last = 0
    async with connect(f"ws://127.0.0.1:{port}/ingest", additional_headers=headers) as ws:
        now = int(time.time() * 1000)
        reserves = [
            {"seq": i, "asset": asset, "amount": 10**15, "as_of_ms": now}
            for i, asset in enumerate(ASSETS)
        ]
        messages = [{"type": "reserves", "source": "cold", "updates": reserves}, *batches]
        for message in messages:
            await ws.send(json.dumps(message))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "ack", reply
            last = max(last, reply["stream_seq"])
            await asyncio.sleep(0.03)  # over several epochs
    return last


def wait_for_cut(url: str, stream: str, last: int, deadline: float) -> EpochRecord:
    """The first stored epoch whose cut covers stream sequence ``last``."""
    store = Store.open(url, migrate=False)
    try:
        while time.monotonic() < deadline:
            epoch = store.latest_epoch()
            if (
                epoch is not None
                and store.epoch_marks(epoch.number).get(("stream", stream), 0) >= last
            ):
                return EpochRecord.decode(epoch.record)
            time.sleep(0.05)
    finally:
        store.close()
    raise AssertionError(f"no epoch covered stream sequence {last}")


def test_the_roles_as_processes(
    tmp_path: Path,
    names: Names,  # noqa: F811
    pg_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    data = tmp_path / "data"
    init(data, "--database-url", pg_url)
    add_settings(
        data,
        {
            "shard_bits": 1,
            "nats_url": NATS,
            "ledger_stream": names.stream,
            "ledger_prefix": names.prefix,
            "ledger_duplicate_window": 60.0,
            "epoch_interval": 0.2,
            "max_interval": 1.0,
        },
    )
    config = load_config(data, {"role": "coordinator"}, environ={})
    vkey = verifier_key_for(config.origin, load_key(config.key_path, None).public_key())
    (tmp_path / "log.vkey").write_text(f"{vkey}\n")
    coordinator_port, front_port, *shard_ports = free_ports(4)
    roles = [
        Role(data, "coordinator", tmp_path / "coordinator.log", coordinator_port),
        Role(data, "shard", tmp_path / "shard0.log", shard_ports[0], shard=0),
        Role(data, "shard", tmp_path / "shard1.log", shard_ports[1], shard=1),
        Role(data, "front-end", tmp_path / "front-end.log", front_port),
    ]
    timings: dict[str, float] = {}
    try:
        wait_healthy(front_port, roles[3].proc, roles[3].log)
        wait_healthy(coordinator_port, roles[0].proc, roles[0].log)  # an epoch: both shards answer
        for port, role in zip(shard_ports, roles[1:3], strict=True):
            wait_healthy(port, role.proc, role.log)  # each shard's own /healthz
        timings["started"] = time.monotonic() - began
        auditor = subprocess.Popen(
            [
                *(sys.executable, "-m", "verifier.cli", "watch"),
                f"ws://127.0.0.1:{coordinator_port}",
                *("--key", str(tmp_path / "log.vkey"), "--state", str(tmp_path / "auditor")),
                *("--max-epochs", "4"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        batches = balance_batches(30, 40)
        last = asyncio.run(produce(front_port, config.ingest_token, batches))
        timings["produced"] = time.monotonic() - began
        out, _ = auditor.communicate(timeout=30)
        assert auditor.returncode == 0, out.decode(errors="replace")
        record = wait_for_cut(pg_url, names.stream, last, time.monotonic() + 20)
        timings["covered"] = time.monotonic() - began
        balances: dict[tuple[str, str], int] = {}
        for batch in batches:
            for u in batch["updates"]:  # type: ignore[attr-defined]
                balances[(u["user"], u["asset"])] = u["amount"]
        assert {a.asset: a.liabilities for a in record.assets} == {
            asset: sum(v for (_, a), v in balances.items() if a == asset) for asset in ASSETS
        }
        held = next(user for (user, _), amount in balances.items() if amount)
        capsys.readouterr()
        port = ["--port", str(coordinator_port), "--role", "coordinator"]
        proof = tmp_path / "proof.json"
        assert (
            prover_main(["--data-dir", str(data), *port, "proof", held, "--out", str(proof)]) == 0
        )
        key = str(tmp_path / "log.vkey")
        assert verify_main(["proof", str(proof), "--key", key, "--user", held]) == 0
    finally:
        exits = terminate(roles)
        timings["stopped"] = time.monotonic() - began
        print(f"timings (s from the start): {timings}; exits (status, s): {exits}")
    logs = {role.name: role.text() for role in roles}
    assert {name: status for name, (status, _) in exits.items()} == dict.fromkeys(logs, 0), logs
    assert all(seconds < STOP_DEADLINE for _, seconds in exits.values())
    assert f"front-end on 127.0.0.1:{front_port}: stream {names.stream}" in logs["front-end"]
    for part in (0, 1):
        assert (
            f"shard {part} of 2 (salt period 1): reading stream {names.stream}"
            in logs[f"shard {part}"]
        ), logs[f"shard {part}"]
        assert f"shard {part} stopped" in logs[f"shard {part}"]
    assert f"of 2 shards listening on ws://127.0.0.1:{coordinator_port}" in logs["coordinator"]
    assert "started salt period 1" in logs["coordinator"]
    assert "coordinator " in logs["coordinator"] and "stopped at epoch" in logs["coordinator"]


def test_a_shard_waiting_for_the_first_salt_period_stops_on_sigterm(
    tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "data"
    init(data, "--database-url", pg_url)
    add_settings(data, {"shard_bits": 1, "nats_url": "nats://127.0.0.1:1"})  # never reached
    shard = Role(data, "shard", tmp_path / "shard.log", shard=1)
    deadline = time.monotonic() + 30
    while "waiting up to" not in shard.text() and time.monotonic() < deadline:
        assert shard.proc.poll() is None, shard.text()
        time.sleep(0.05)
    assert "shard 1: no salt period in the store yet" in shard.text()
    (status, seconds) = terminate([shard])["shard 1"]
    assert status == 0 and seconds < 5, shard.text()
