"""deploy/sharded/: the compose example of a sharded prover parses (the
subset of YAML tests/test_deploy.py reads, and PyYAML agrees if present),
references files and volumes that exist, runs commands the real parsers
accept, each naming a role of ``run``; and with the data directory its
init.sh makes (run outside a container), every role's process loads a
configuration that holds to the rules, from config.toml, its environment
and its command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prover import cli as prover_cli
from prover.config import ROLES, Settings, load_config
from prover.shards.roles import load_router
from tests.test_deploy import parse_yaml_subset
from verifier import cli as verifier_cli
from verifier.checkpoint import VerifierKey

ROOT = Path(__file__).parent.parent
SHARDED = ROOT / "deploy" / "sharded"
DATA_DIR = "/var/lib/solvency/prover"  # init.sh's data directory, on the prover's volume
PG_URL = "postgresql+psycopg://solvency:x@postgres/solvency"  # in place of init's


def compose() -> dict[str, Any]:
    text = (SHARDED / "compose.yaml").read_text()
    data = parse_yaml_subset(text)
    try:
        import yaml
    except ImportError:
        pass
    else:
        assert yaml.safe_load(text) == data
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def prover_services() -> dict[str, tuple[str, Any]]:
    """The services running ``solvency-prover ... run``: each one's role and parsed command."""
    found = {}
    for name, spec in services().items():
        command = spec.get("command", [])
        if command[:1] == ["solvency-prover"]:
            parsed = prover_cli._parser().parse_args(command[1:])
            assert parsed.run == prover_cli.cmd_run, name
            found[name] = (parsed.role, parsed)
    return found


def test_the_sharded_compose_file_has_its_services() -> None:
    found = services()
    assert set(found) == {
        "postgres",
        *("nats1", "nats2", "nats3"),
        "init",
        "coordinator",
        *("shard0", "shard1"),
        *("frontend1", "frontend2"),
        "auditor",
    }
    assert found["postgres"]["image"].startswith("postgres:15")
    roles = sorted(role for role, _ in prover_services().values())
    assert roles == ["coordinator", "front-end", "front-end", "shard", "shard"]
    shards = [s for s, (role, _) in prover_services().items() if role == "shard"]
    assert sorted(found[s]["environment"]["SOLVENCY_SHARD"] for s in shards) == ["0", "1"]
    for name in ("init", "auditor", *prover_services()):
        assert found[name]["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
        assert found[name]["image"] == "solvency-stream:local"


def test_the_nats_servers_make_one_jetstream_cluster() -> None:
    nodes = {name: spec for name, spec in services().items() if name.startswith("nats")}
    assert len(nodes) == 3
    for name, spec in nodes.items():
        assert spec["image"].startswith("nats:")
        command = spec["command"]
        option = {command[i]: command[i + 1] for i in range(len(command) - 1)}
        assert "-js" in command and option["-sd"] == "/data"
        assert option["-n"] == name
        assert option["--cluster_name"] == "solvency"
        assert option["--cluster"] == "nats://0.0.0.0:6222"
        routes = option["--routes"].split(",")
        assert routes == [f"nats://{other}:6222" for other in sorted(nodes) if other != name]
        assert f"{name}-data:/data" in spec["volumes"]
    urls = services()["init"]["environment"]["NATS_URL"].split(",")
    assert urls == [f"nats://{name}:4222" for name in sorted(nodes)]
    assert services()["init"]["environment"]["LEDGER_REPLICAS"] == "3"


def test_the_sharded_compose_file_references_what_exists() -> None:
    data = compose()
    found = data["services"]
    used = set()
    for name, spec in found.items():
        for target, condition in spec.get("depends_on", {}).items():
            assert target in found, f"{name} depends on {target}"
            assert condition["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in found[target], target
        if "build" in spec:
            context = SHARDED / spec["build"]["context"]
            assert context.resolve() == ROOT
            assert (context / spec["build"]["dockerfile"]).is_file()
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (SHARDED / source).is_file(), f"{name}: {volume}"
            else:
                used.add(source)
    assert used == set(data["volumes"])


def test_every_process_runs_a_role_on_the_data_directory_init_makes() -> None:
    found = services()
    for name, (role, parsed) in prover_services().items():
        assert role in ROLES and role != "single", name
        assert parsed.data_dir == DATA_DIR, name
        assert parsed.json_logs and parsed.follow is None, name
        assert "prover-data:/var/lib/solvency:ro" in found[name]["volumes"], name
        assert found[name]["init"] is True, name  # SIGTERM to the process alone
        assert found[name]["stop_signal"] == "SIGTERM", name
        if role != "shard":  # shards listen on no port
            assert found[name]["environment"]["SOLVENCY_HOST"] == "0.0.0.0", name
            assert [p.rsplit(":", 1)[1] for p in found[name]["ports"]] == ["8765"], name
            assert "8765/healthz" in " ".join(found[name]["healthcheck"]["test"]), name
    assert found["init"]["command"] == ["sh", "/init.sh"]
    assert "prover-data:/var/lib/solvency" in found["init"]["volumes"]
    assert "./init.sh:/init.sh:ro" in found["init"]["volumes"]


def test_the_environment_names_configuration_keys() -> None:
    keys = {f"SOLVENCY_{name.upper()}" for name in Settings.__struct_fields__}
    for name, spec in services().items():
        for variable in spec.get("environment", {}):
            if variable.startswith("SOLVENCY_"):
                assert variable in keys, f"{name}: {variable} is no configuration key"


def test_the_auditor_watches_the_coordinator() -> None:
    spec = services()["auditor"]
    assert spec["command"][0] == "solvency-verify"
    parsed = verifier_cli._parser().parse_args(spec["command"][1:])
    assert parsed.run == verifier_cli.cmd_watch
    assert parsed.url == "ws://coordinator:8765"
    assert parsed.key == "/var/lib/solvency-auditor/log.vkey"  # init.sh's copy
    assert parsed.state.startswith("/var/lib/solvency-auditor/")
    assert "auditor-data:/var/lib/solvency-auditor" in spec["volumes"]
    assert "auditor-data:/var/lib/solvency-auditor" in services()["init"]["volumes"]


def run_init(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """init.sh with the compose file's settings, on directories of ``tmp_path``
    and a SQLite file in place of PostgreSQL."""
    env = {
        **os.environ,
        **{k: v for k, v in services()["init"]["environment"].items() if k != "DATABASE_URL"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PROVER_VOLUME": str(tmp_path / "prover"),
        "AUDITOR_VOLUME": str(tmp_path / "auditor"),
        "OWNER": f"{os.getuid()}:{os.getgid()}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'prover.db'}",
    }
    return subprocess.run(
        ["sh", str(SHARDED / "init.sh")], env=env, capture_output=True, text=True, timeout=60
    )


needs_console_scripts = pytest.mark.skipif(
    shutil.which("solvency-prover", path=str(Path(sys.executable).parent)) is None,
    reason="the console scripts are not installed beside this interpreter",
)


@needs_console_scripts
def test_init_sets_up_what_every_process_loads(tmp_path: Path) -> None:
    for directory in ("prover", "auditor", "db"):
        (tmp_path / directory).mkdir()
    done = run_init(tmp_path)
    assert done.returncode == 0, done.stderr
    data = tmp_path / "prover" / "prover"
    vkey = VerifierKey.parse((data / "verifier.pub").read_text().strip())
    assert VerifierKey.parse((tmp_path / "auditor" / "log.vkey").read_text().strip()) == vkey
    assert str(vkey) in done.stdout
    assert (data / "config.toml").stat().st_mode & 0o777 == 0o600
    assert (data / "routing.key").stat().st_mode & 0o777 == 0o600
    for name, (role, parsed) in prover_services().items():
        environ = {k: str(v) for k, v in services()[name].get("environment", {}).items()}
        overrides = {"role": parsed.role, "database_url": PG_URL}
        config = load_config(data, overrides, environ=environ)
        assert config.role == role
        assert config.shard_bits == 1 and config.ledger_replicas == 3
        assert config.nats_url == services()["init"]["environment"]["NATS_URL"]
        assert [a.id for a in config.assets] == ["BTC", "ETH", "USDT"]
        assert load_router(config).parts == 2
    again = run_init(tmp_path)  # done once: nothing more
    assert again.returncode == 0 and "already set up" in again.stdout


@needs_console_scripts
def test_init_refuses_an_interrupted_set_up(tmp_path: Path) -> None:
    for directory in ("prover/prover", "auditor", "db"):
        (tmp_path / directory).mkdir(parents=True)
    done = run_init(tmp_path)
    assert done.returncode == 1
    assert "docker compose down -v" in done.stderr


def test_the_readme_names_what_the_compose_file_runs() -> None:
    readme = (SHARDED / "README.md").read_text()
    for name in services():
        assert re.search(rf"`{name}`", readme), name
    assert "docker compose -f deploy/sharded/compose.yaml up --build" in readme
