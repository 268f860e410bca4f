"""`dino-mlops monitoring render-k8s | check | up` through the real command tree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dino_model.cli.main import main
from dino_model.monitoring import k8s

HERE = Path(__file__).resolve().parent


def test_render_k8s_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["monitoring", "render-k8s", "--output-dir", str(tmp_path)]) == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert sorted(Path(p).name for p in written) == sorted([k8s.RULE_FILE, k8s.DASHBOARD_FILE])
    assert main(["monitoring", "render-k8s", "--output-dir", str(tmp_path), "--check"]) == 0
    (tmp_path / k8s.DASHBOARD_FILE).write_text("edited\n")
    assert main(["monitoring", "render-k8s", "--output-dir", str(tmp_path), "--check"]) == 1
    assert json.loads(capsys.readouterr().out.split("}\n")[-2] + "}")["stale"] == [str(tmp_path / k8s.DASHBOARD_FILE)]


def test_check_runs_promtool(promtool_bin: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["monitoring", "check", "--rules-test", str(HERE / "rules_test.yml")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "SUCCESS" in result["rules"] and "valid prometheus config" in result["config"]
    assert "SUCCESS" in result[f"test {HERE / 'rules_test.yml'}"]


@pytest.mark.prometheus
def test_up_serves_until_sigterm(prometheus_bins: tuple[str, str], port_factory, tmp_path: Path) -> None:
    prometheus_port, gateway_port = port_factory(), port_factory()
    command = [sys.executable, "-m", "dino_model.cli", "monitoring", "up", "--workdir", str(tmp_path),
               "--prometheus-port", str(prometheus_port), "--pushgateway-port", str(gateway_port),
               "--triton", "127.0.0.1:1", "--duration-s", "120"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:  # the result JSON comes once both servers are ready
            lines.append(line)
            if line.startswith("}"):
                break
        result = json.loads("".join(lines))
        assert result["prometheus"] == f"http://127.0.0.1:{prometheus_port}"
        for url in (result["prometheus"], result["pushgateway"]):
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
                assert response.status == 200
        assert (tmp_path / "prometheus.yml").is_file() and (tmp_path / "rules.yml").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{result['prometheus']}/-/ready", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
