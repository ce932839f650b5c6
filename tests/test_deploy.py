"""deploy/: the systemd units verify with systemd-analyze and keep their
hardening, the Grafana dashboard queries only metrics the prover exports, the
compose example parses, references files that exist and runs command lines
the real parsers accept, and its set-up script works outside a container."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover import cli as prover_cli
from prover.config import Settings, load_config
from prover.metrics import Metrics, render_metrics
from prover.witness_protocol import WitnessEndpoint
from prover.witnesses import WitnessStats
from verifier import cli as verifier_cli
from verifier.checkpoint import VerifierKey
from verifier.cosignature import witness_key_for
from verifier.witness_cli import load_signer_key

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ["solvency-prover.service", "solvency-witness.service"]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


# systemd units


def unit_directives(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each a list of (key, value) in order (systemd
    allows a key several times)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, line
        current.append((key.strip(), value.strip()))
    return sections


def service(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in unit_directives((DEPLOY / name).read_text())["Service"]:
        values.setdefault(key, []).append(value)
    return values


def runnable_copy(text: str, directory: Path, name: str) -> Path:
    """The unit with its ExecStart binary, which is not installed here,
    replaced by one that exists, so that systemd-analyze checks the rest."""
    true = shutil.which("true")
    assert true
    text, count = re.subn(r"^ExecStart=/\S+", f"ExecStart={true}", text, flags=re.MULTILINE)
    assert count == 1
    path = directory / name
    path.write_text(text)
    return path


def verify_complaints(path: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit at ``path``: it
    exits 0 on unknown keys and bad values ("ignoring"), so every line naming
    the unit counts, as does a non-zero exit."""
    assert SYSTEMD_ANALYZE
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).splitlines()
    complaints = [line for line in output if path.name in line]
    if done.returncode != 0:
        complaints.append(f"exit status {done.returncode}: {output}")
    return complaints


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_the_unit_verifies(name: str, tmp_path: Path) -> None:
    path = runnable_copy((DEPLOY / name).read_text(), tmp_path, name)
    assert verify_complaints(path) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    "mistake", ["NoNewPrivilegs=yes", "ProtectSystem=strictt", "RestrictAddressFamilies=AF_INTE"]
)
def test_verification_catches_a_typo(mistake: str, tmp_path: Path) -> None:
    text = (DEPLOY / UNITS[0]).read_text().replace("[Service]\n", f"[Service]\n{mistake}\n")
    path = runnable_copy(text, tmp_path, UNITS[0])
    assert verify_complaints(path)


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_the_units_exposure_stays_low(name: str, tmp_path: Path) -> None:
    path = runnable_copy((DEPLOY / name).read_text(), tmp_path, name)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no offline security review")
    overall = [line for line in done.stdout.splitlines() if "Overall exposure" in line]
    assert done.returncode == 0, overall or done.stderr


def test_the_prover_unit_is_hardened_without_breaking_the_daemon() -> None:
    unit = service("solvency-prover.service")
    expected = {
        "User": "solvency",
        "ExecStart": "/opt/solvency/.venv/bin/solvency-prover --data-dir /var/lib/solvency"
        " run --json-logs",
        "LimitNOFILE": "65536",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/solvency",
        "StateDirectory": "solvency",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "KillSignal": "SIGTERM",
        # the tree worker must outlive the daemon's SIGTERM to build the last epoch
        "KillMode": "mixed",
        "TimeoutStopSec": "30",
        "Restart": "on-failure",
    }
    assert {key: unit.get(key, [None])[-1] for key in expected} == expected
    # the pipe to the worker is a socket pair; PostgreSQL may be on a Unix socket
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][-1].split()
    # the worker calls prctl (@process), the daemon setrlimit (@resources)
    for value in unit["SystemCallFilter"]:
        if value.startswith("~"):
            assert not {"@process", "@resources", "prctl", "setrlimit", "prlimit64"} & set(
                value[1:].split()
            )
    assert "MemoryDenyWriteExecute" not in unit  # ctypes and cffi callbacks


def test_the_witness_unit_keeps_its_state_and_key_private() -> None:
    unit = service("solvency-witness.service")
    assert unit["User"] == ["solvency-witness"]
    assert unit["StateDirectory"] == ["solvency-witness"]
    assert unit["StateDirectoryMode"] == ["0700"]
    assert unit["ReadWritePaths"] == ["/var/lib/solvency-witness"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["LoadCredential"] == ["witness.key:/etc/solvency-witness/witness.key"]


def exec_start(name: str, substitutions: dict[str, list[str]]) -> list[str]:
    """The unit's ExecStart as arguments, with its specifiers and variables
    replaced as systemd would (``$VAR`` splits into words, ``${VAR}`` not)."""
    words = []
    for word in shlex.split(service(name)["ExecStart"][-1]):
        for pattern, replacement in substitutions.items():
            if word == pattern:
                words += replacement
                break
            if pattern in word and len(replacement) == 1:
                word = word.replace(pattern, replacement[0])
        else:
            words.append(word)
    return words


def test_the_units_command_lines_parse() -> None:
    args = exec_start("solvency-prover.service", {})
    assert args[0].endswith("/solvency-prover")
    parsed = prover_cli._parser().parse_args(args[1:])
    assert (parsed.run, parsed.data_dir, parsed.json_logs) == (
        prover_cli.cmd_run,
        "/var/lib/solvency",
        True,
    )

    args = exec_start(
        "solvency-witness.service",
        {
            "%d": ["/run/credentials/solvency-witness.service"],
            "$WITNESS_LOGS": ["--log", "a.example/log+01020304+AQ", "--log", "b"],
            "${WITNESS_LISTEN}": ["0.0.0.0:7380"],
        },
    )
    assert args[0].endswith("/solvency-verify")
    parsed = verifier_cli._parser().parse_args(args[1:])
    assert parsed.run == verifier_cli.cmd_witness
    assert parsed.key_file == "/run/credentials/solvency-witness.service/witness.key"
    assert parsed.log == ["a.example/log+01020304+AQ", "b"]
    assert parsed.state == "/var/lib/solvency-witness"
    assert parsed.listen == "0.0.0.0:7380"


# Grafana dashboard

PROMQL_FUNCTIONS = {"rate", "deriv", "histogram_quantile", "sum", "by", "time"}


def exported_metric_names() -> set[str]:
    """The sample names of a fresh daemon's /metrics, with one witness, as
    rendered by the code that serves it; histograms with their series."""
    private = Ed25519PrivateKey.generate()
    key = witness_key_for("witness.example/w1", private.public_key())
    endpoint = WitnessEndpoint.parse(str(key), "http://127.0.0.1:7380")
    stats = WitnessStats(endpoint, cosigned_epoch=3, lag=1, failures=2, failing=1, latency=0.01)
    text = render_metrics(Metrics(), [stats])
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard() -> dict[str, Any]:
    data = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert data["title"] and data["uid"]
    assert isinstance(data["schemaVersion"], int) and data["schemaVersion"] >= 30
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, panel
        assert panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and box["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["type"] == "prometheus"
            assert target["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_the_dashboard_queries_are_well_formed() -> None:
    for expr in dashboard_exprs():
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, expr
        assert depth == 0, expr
        assert set(re.findall(r"\b([a-z_]+)\s*\(", expr)) <= PROMQL_FUNCTIONS, expr
        for name in re.findall(r"histogram_quantile\(\s*[0-9.]+\s*,.*?\b(\w+)\[", expr):
            assert name.endswith("_bucket"), expr
        assert re.findall(r"\bsolvency_\w+", expr), expr


def test_the_dashboard_queries_only_exported_metrics() -> None:
    queried = {name for expr in dashboard_exprs() for name in re.findall(r"\bsolvency_\w+", expr)}
    missing = queried - exported_metric_names()
    assert not missing, f"the dashboard queries metrics the prover does not export: {missing}"


def test_the_dashboard_shows_the_latency_quantiles() -> None:
    exprs = dashboard_exprs()
    for name, quantiles in [
        ("solvency_publication_delay_seconds", ("0.5", "0.99")),
        ("solvency_epoch_close_seconds", ("0.99",)),
        ("solvency_ingest_batch_seconds", ("0.99",)),
        ("solvency_fanout_seconds", ("0.99",)),
    ]:
        for q in quantiles:
            expr = f"histogram_quantile({q}, sum by (le) (rate({name}_bucket[5m])))"
            assert expr in exprs


# compose example


class YAMLSubsetError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(text: str, line: int) -> Any:
    if not text:
        return None
    if text[0] in '"[{':
        try:
            return json.loads(text)
        except ValueError as exc:
            raise YAMLSubsetError(f"line {line}: {exc}") from None
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'":
            raise YAMLSubsetError(f"line {line}: unterminated quote")
        return text[1:-1].replace("''", "'")
    if text[0] in "&*!|>%@`":
        raise YAMLSubsetError(f"line {line}: {text[0]!r} is outside the subset")
    if re.fullmatch(r"[\w.-]+:( .*)?", text):
        raise YAMLSubsetError(f"line {line}: a mapping inside a list item")
    return {"true": True, "false": False, "null": None, "~": None}.get(
        text, int(text) if re.fullmatch(r"-?[0-9]+", text) else text
    )


def parse_yaml_subset(text: str) -> Any:
    """The YAML that compose.yaml is kept to: block mappings and lists,
    plain, quoted and JSON-style flow scalars, comments; anything else
    (anchors, block scalars, tabs) raises YAMLSubsetError."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        content = _strip_comment(raw).rstrip()
        if not content.strip():
            continue
        if "\t" in content[: len(content) - len(content.lstrip())]:
            raise YAMLSubsetError(f"line {number}: tab in indentation")
        lines.append((number, len(content) - len(content.lstrip(" ")), content.strip()))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][2].startswith("- ") or lines[i][2] == "-":
            items = []
            while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("-"):
                number, _, content = lines[i]
                if content == "-":
                    raise YAMLSubsetError(f"line {number}: nested block in a list")
                items.append(_scalar(content[2:].strip(), number))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][1] == indent:
            number, _, content = lines[i]
            match = re.fullmatch(r"([\w.-]+):(?: +(.*))?", content)
            if not match:
                raise YAMLSubsetError(f"line {number}: not 'key: value': {content!r}")
            key, value = match.groups()
            if key in mapping:
                raise YAMLSubsetError(f"line {number}: {key!r} twice")
            i += 1
            if value is None and i < len(lines) and lines[i][1] > indent:
                mapping[key], i = block(i, lines[i][1])
            else:
                mapping[key] = _scalar(value or "", number)
        return mapping, i

    if not lines:
        return None
    value, end = block(0, lines[0][1])
    if end != len(lines):
        number, _, content = lines[end]
        raise YAMLSubsetError(f"line {number}: unexpected indentation: {content!r}")
    return value


def test_the_yaml_subset_parser() -> None:
    text = 'a: 1  # comment\nb:\n  c: "x # y"\n  d:\n    - \'1:2\'\n    - ["e", "f"]\ne:\nf: true\n'
    assert parse_yaml_subset(text) == {
        "a": 1,
        "b": {"c": "x # y", "d": ["1:2", ["e", "f"]]},
        "e": None,
        "f": True,
    }
    for bad in ["a: &x 1\n", "a: |\n  x\n", "a:\n  b: 1\n c: 2\n", "a: 1\na: 2\n", "- b: 1\n"]:
        with pytest.raises(YAMLSubsetError):
            parse_yaml_subset(bad)


def compose() -> dict[str, Any]:
    text = (DEPLOY / "compose.yaml").read_text()
    data = parse_yaml_subset(text)
    try:
        import yaml
    except ImportError:
        pass
    else:
        assert yaml.safe_load(text) == data
    assert isinstance(data, dict)
    return data


def test_the_compose_file_has_its_services() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "nats", "init", "witness1", "witness2", "prover"}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["nats"]["image"].startswith("nats:")
    assert "-js" in services["nats"]["command"]
    for name in ("init", "witness1", "witness2", "prover"):
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    prover = services["prover"]
    assert prover["ulimits"]["nofile"] == {"soft": 65536, "hard": 65536}
    assert prover["init"] is True  # SIGTERM to the daemon alone
    assert set(prover["depends_on"]) == {"postgres", "init", "nats", "witness1", "witness2"}


def test_the_compose_file_references_what_exists() -> None:
    data = compose()
    services = data["services"]
    declared = set(data["volumes"])
    used = set()
    for name, spec in services.items():
        for target, condition in spec.get("depends_on", {}).items():
            assert target in services, f"{name} depends on {target}"
            assert condition["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], target
        if "build" in spec:
            context = DEPLOY / spec["build"]["context"]
            assert context.is_dir() and (context / spec["build"]["dockerfile"]).is_file()
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {volume}"
            else:
                used.add(source)
    assert used == declared


def test_the_dockerfile_installs_both_distributions() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [line.split(None, 1) for line in lines if line.strip() and line[0] != "#"]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    for word, rest in instructions:
        assert word in {"FROM", "RUN", "COPY", "ENV", "USER", "WORKDIR"}, word
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install [^&]*\./packaging/verifier \.(\s|$)", run)
    assert (ROOT / "packaging" / "verifier" / "pyproject.toml").is_file()
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()


def test_the_compose_commands_parse() -> None:
    services = compose()["services"]
    command = services["prover"]["command"]
    assert command[0] == "solvency-prover"
    parsed = prover_cli._parser().parse_args(command[1:])
    assert parsed.run == prover_cli.cmd_run
    # the init script's data directory, on the volume the prover mounts
    assert parsed.data_dir == "/var/lib/solvency/prover"
    assert "prover-data:/var/lib/solvency" in services["prover"]["volumes"]
    for name in ("witness1", "witness2"):
        command = services[name]["command"]
        assert command[0] == "solvency-verify"
        parsed = verifier_cli._parser().parse_args(command[1:])
        assert parsed.run == verifier_cli.cmd_witness
        # what the init script wrote into the witness's volume
        volume = f"{name}-data:/var/lib/solvency-witness"
        assert volume in services[name]["volumes"]
        assert parsed.key_file == "/var/lib/solvency-witness/witness.key"
        assert parsed.log == ["/var/lib/solvency-witness/log.vkey"]
        assert parsed.state.startswith("/var/lib/solvency-witness/")
        assert parsed.listen == "0.0.0.0:7380"
        assert f"{name}-data:/witnesses/{name[-1]}" in services["init"]["volumes"]
    assert services["init"]["command"] == ["sh", "/compose-init.sh"]


def test_the_compose_environment_names_configuration_keys() -> None:
    keys = {f"SOLVENCY_{name.upper()}" for name in Settings.__struct_fields__}
    for name, spec in compose()["services"].items():
        for variable in spec.get("environment", {}):
            if variable.startswith("SOLVENCY_"):
                assert variable in keys, f"{name}: {variable} is no configuration key"


def run_init(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PROVER_VOLUME": str(tmp_path / "prover"),
        "WITNESS_VOLUMES": str(tmp_path / "witnesses"),
        "OWNER": f"{os.getuid()}:{os.getgid()}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'prover.db'}",
    }
    return subprocess.run(
        ["sh", str(DEPLOY / "compose-init.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("solvency-verify", path=str(Path(sys.executable).parent)) is None,
    reason="the console scripts are not installed beside this interpreter",
)
def test_the_compose_init_script_sets_up_prover_and_witnesses(tmp_path: Path) -> None:
    for directory in ("prover", "witnesses/1", "witnesses/2", "db"):
        (tmp_path / directory).mkdir(parents=True)
    done = run_init(tmp_path)
    assert done.returncode == 0, done.stderr

    data = tmp_path / "prover" / "prover"
    config = load_config(data, environ={})
    log_key = VerifierKey.parse((data / "verifier.pub").read_text().strip())
    assert log_key.name == config.origin == "compose.example/solvency"
    assert [asset.id for asset in config.assets] == ["BTC", "ETH", "USDT"]
    urls = [w.url for w in config.witnesses]
    assert urls == ["http://witness1:7380", "http://witness2:7380"]
    assert config.quorum == 2
    for n, witness in enumerate(config.witnesses, 1):
        volume = tmp_path / "witnesses" / str(n)
        name, private = load_signer_key(str(volume / "witness.key"))  # mode 600
        assert str(witness_key_for(name, private.public_key())) == witness.key
        assert VerifierKey.parse((volume / "log.vkey").read_text().strip()) == log_key
        assert (volume.stat().st_mode & 0o777) == 0o700
    assert str(log_key) in done.stdout

    again = run_init(tmp_path)  # done once: nothing more
    assert again.returncode == 0 and "already set up" in again.stdout
    assert load_config(data, environ={}).witnesses == config.witnesses


def test_the_compose_init_script_refuses_an_interrupted_set_up(tmp_path: Path) -> None:
    for directory in ("prover/prover", "witnesses/1", "witnesses/2", "db"):
        (tmp_path / directory).mkdir(parents=True)
    done = run_init(tmp_path)
    assert done.returncode == 1
    assert "docker compose down -v" in done.stderr
