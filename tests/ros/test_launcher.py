"""`mobilevlm-agent launch`: YAML launch files parsed as ros2 launch would, processes supervised."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.launcher import Launcher, package_share, parse_launch

REPO = package_share()


def write(tmp_path, text: str):
    path = tmp_path / "test.launch.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_launch_files_resolve(tmp_path):
    processes, args = parse_launch(REPO / "launch" / "sim.launch.yaml", {"dry_run": "false", "namespace": "robot1"})
    names = [p.name for p in processes]
    assert names == ["sim_node", "encoder_node", "planner_node", "agent_node", "safety_node"]
    safety = processes[-1]
    assert safety.required and "dry_run:=false" in safety.cmd and "__ns:=/robot1" in safety.cmd
    assert safety.cmd[safety.cmd.index("--params-file") + 1] == str(REPO / "config" / "agent.yaml")
    assert processes[0].env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds.xml")
    agent, _ = parse_launch(REPO / "launch" / "agent.launch.yaml", {"camera_source": "clip.mp4"})
    assert "source:=clip.mp4" in agent[0].cmd and not any("__node" in a for a in agent[1].cmd)  # the composition keeps both names


def test_substitutions_remaps_and_errors(tmp_path):
    path = write(tmp_path, """
        launch:
        - arg: {name: ns, default: bot}
        - let: {name: topic, value: "/$(var ns)/cmd"}
        - node:
            pkg: mobilevlm_agent
            exec: safety_node
            name: guard
            namespace: $(var ns)
            param: [{name: max_linear, value: 0.2}, {name: stamped, value: false}]
            remap: [{from: cmd_vel, to: $(var topic)}]
        """)
    (p,), _ = parse_launch(path, {})
    assert p.cmd[-10:] == ["-r", "__node:=guard", "-r", "__ns:=/bot", "-p", "max_linear:=0.2", "-p", "stamped:=false", "-r", "cmd_vel:=/bot/cmd"][-10:]
    with pytest.raises(ConfigError, match="unknown launch arguments"):
        parse_launch(path, {"nope": "1"})
    bad = write(tmp_path, "launch:\n- include: {file: x.launch.py}\n")
    with pytest.raises(ConfigError, match="include"):
        parse_launch(bad, {})
    other = write(tmp_path, "launch:\n- node: {pkg: ros_gz_bridge, exec: parameter_bridge}\n")
    with pytest.raises(ConfigError, match="only mobilevlm_agent"):
        parse_launch(other, {})


def script(tmp_path, name: str, code: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return f"{sys.executable} {path}"


def test_required_exit_shuts_everything_down_with_an_error(tmp_path):
    marker = tmp_path / "respawns"
    path = write(tmp_path, f"""
        launch:
        - executable: {{name: sleeper, cmd: '{script(tmp_path, "sleeper", "import time; time.sleep(60)")}'}}
        - executable: {{name: flaky, respawn: 'true', respawn_delay: 0.2, cmd: '{script(tmp_path, "flaky", f"open({str(marker)!r}, 'a').write('x')")}'}}
        - executable: {{name: required, on_exit: shutdown, cmd: '{script(tmp_path, "required", "import time, sys; time.sleep(2); sys.exit(3)")}'}}
        """)
    processes, _ = parse_launch(path, {})
    out = io.StringIO()
    launcher = Launcher(processes, grace_s=5, out=out)
    t0 = time.monotonic()
    code = launcher.run()
    assert code == 3 and time.monotonic() - t0 < 15
    assert all(p.poll() is not None for p in launcher.running.values())  # the sleeper was stopped too
    assert len(marker.read_text()) >= 3  # respawned
    assert "[launch] required is required (on_exit: shutdown)" in out.getvalue()


def test_sigterm_stops_every_child(tmp_path):
    path = write(tmp_path, f"""
        launch:
        - executable: {{name: a, cmd: '{script(tmp_path, "a", "import time; print('up', flush=True); time.sleep(60)")}'}}
        - executable: {{name: b, cmd: '{script(tmp_path, "b", "import time; time.sleep(60)")}'}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "mobilevlm_agent.cli", "launch", str(path)], stdout=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + 20
    while not any("[a] up" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(line.split("pid ")[1].rstrip(")\n")) for line in lines if "(pid " in line]
    assert len(pids) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os
            os.kill(pid, 0)


def test_python_launch_files_name_real_executables():
    """launch_ros is not on PyPI, so the .launch.py files are checked statically: syntax, arguments, executables."""
    import ast
    import re

    nodes = set(re.search(r"NODES = \((.*?)\)", (REPO / "setup.py").read_text()).group(1).replace('"', "").replace(" ", "").split(","))
    for name in ("agent", "sim", "gazebo"):
        source = (REPO / "launch" / f"{name}.launch.py").read_text()
        tree = ast.parse(source)
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
        used = set(re.findall(r'executable="(\w+)"', source)) | set(re.findall(r'model_node\("(\w+)"\)', source))
        ours = used - {"parameter_bridge"}
        assert ours and ours <= nodes, f"{name}.launch.py names {ours - nodes}"
        for arg in ("model", "params_file", "namespace", "use_sim_time", "dry_run"):
            assert f'"{arg}"' in source, f"{name}.launch.py lacks the {arg} argument"
    with pytest.raises(ConfigError, match="include"):  # Gazebo needs ros2 launch; the runner says so
        parse_launch(REPO / "launch" / "gazebo.launch.yaml", {})
