"""Run a ROS 2 YAML launch file where `ros2 launch` is absent: one process per node, prefixed logs, clean shutdown.

Supports the subset of the standard frontend our launch files use: `arg`, `let`, `set_env`, `node` (pkg, exec,
name, namespace, param with `from:` files, remap, args, respawn, respawn_delay, on_exit: shutdown), `executable`
(cmd), and the substitutions `$(var)`, `$(env)`, `$(find-pkg-share)`. Anything else is an error, never ignored.
It knows nothing of rclpy: nodes are plain processes given standard `--ros-args`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mobilevlm_agent.errors import ConfigError

PACKAGE = "mobilevlm_agent"
SUBSTITUTION = re.compile(r"\$\((var|env|find-pkg-share)\s+([^)\s]+)(?:\s+([^)]*))?\)")


def package_share() -> Path:
    """The installed share directory when there is one, else the source tree (which has the same layout)."""
    installed = Path(sys.prefix) / "share" / PACKAGE
    return installed if (installed / "launch").is_dir() else Path(__file__).resolve().parents[1]


@dataclass
class Process:
    name: str
    cmd: list[str]
    respawn: bool = False
    respawn_delay: float = 1.0
    required: bool = False  # on_exit: shutdown
    env: dict[str, str] = field(default_factory=dict)


def substitute(text, args: dict[str, str]) -> str:
    if not isinstance(text, str):
        return text

    def one(m: re.Match) -> str:
        kind, name, default = m.group(1), m.group(2), m.group(3)
        if kind == "var":
            if name not in args:
                raise ConfigError(f"launch argument {name!r} is not declared")
            return args[name]
        if kind == "env":
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise ConfigError(f"environment variable {name} is not set")
            return default
        if name != PACKAGE:
            raise ConfigError(f"package {name!r} is not available here; only {PACKAGE} (use ros2 launch on a robot with ROS 2)")
        return str(package_share())

    return SUBSTITUTION.sub(one, text)


def parse_launch(path: str | Path, overrides: dict[str, str]) -> tuple[list[Process], dict[str, str]]:
    """The processes a YAML launch file starts, with launch arguments resolved. Raises ConfigError on anything unknown."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read launch file {path}: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("launch"), list):
        raise ConfigError(f"{path}: a YAML launch file is a mapping with a 'launch' list")
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    processes: list[Process] = []
    declared: set[str] = set()
    for entry in document["launch"]:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{path}: each launch entry is a one-key mapping, got {entry!r}")
        (kind, body), = entry.items()
        if kind == "arg":
            declared.add(body["name"])
            if body["name"] in overrides:
                args[body["name"]] = overrides[body["name"]]
            elif "default" in body:
                args[body["name"]] = substitute(str(body["default"]), args)
            else:
                raise ConfigError(f"launch argument {body['name']!r} has no default; pass {body['name']}:=VALUE")
        elif kind == "let":
            args[body["name"]] = substitute(str(body["value"]), args)
        elif kind == "set_env":
            env[body["name"]] = substitute(str(body["value"]), args)
        elif kind == "node":
            processes.append(node_process(body, args, dict(env)))
        elif kind == "executable":
            cmd = shlex.split(substitute(body["cmd"], args))
            processes.append(Process(body.get("name", Path(cmd[0]).name), cmd, *process_options(body, args), env=dict(env)))
        else:
            raise ConfigError(f"{path}: launch action {kind!r} is not supported here (arg, let, set_env, node, executable)")
    unknown = set(overrides) - declared
    if unknown:
        raise ConfigError(f"unknown launch arguments {sorted(unknown)}; declared: {sorted(declared)}")
    return processes, args


def process_options(body: dict, args: dict) -> tuple[bool, float, bool]:
    truth = lambda v: str(substitute(str(v), args)).lower() == "true"  # noqa: E731
    on_exit = substitute(str(body.get("on_exit", "")), args)
    if on_exit not in ("", "shutdown"):
        raise ConfigError(f"on_exit {on_exit!r} is not supported (only shutdown)")
    return truth(body.get("respawn", False)), float(substitute(str(body.get("respawn_delay", 1.0)), args)), on_exit == "shutdown"


def node_process(body: dict, args: dict, env: dict) -> Process:
    unknown = set(body) - {"pkg", "exec", "name", "namespace", "ns", "param", "remap", "args", "output", "respawn", "respawn_delay", "on_exit"}
    if unknown:
        raise ConfigError(f"node {body.get('exec')!r}: unsupported attributes {sorted(unknown)}")
    pkg, executable = substitute(body["pkg"], args), substitute(body["exec"], args)
    if pkg != PACKAGE:
        raise ConfigError(f"node {pkg}/{executable}: only {PACKAGE} nodes run without ros2 launch")
    if not re.fullmatch(r"[a-z_]+", executable) or not (Path(__file__).resolve().parents[1] / "ros_nodes" / f"{executable}.py").is_file():
        raise ConfigError(f"{PACKAGE} has no executable {executable!r}")
    name = substitute(body.get("name", executable), args)
    ros_args = ["-r", f"__node:={name}"] if "name" in body else []  # unnamed: a multi-node process keeps its names
    namespace = substitute(body.get("namespace", body.get("ns", "")), args)
    if namespace:
        ros_args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    for param in body.get("param", []):
        if "from" in param:
            source = substitute(param["from"], args)
            if not Path(source).is_file():
                raise ConfigError(f"node {name}: parameter file {source} not found")
            ros_args += ["--params-file", source]
        else:
            value = param["value"]
            value = substitute(value, args) if isinstance(value, str) else json.dumps(value)  # JSON scalars/lists are YAML
            ros_args += ["-p", f"{param['name']}:={value}"]
    for remap in body.get("remap", []):
        ros_args += ["-r", f"{substitute(remap['from'], args)}:={substitute(remap['to'], args)}"]
    extra = shlex.split(substitute(body.get("args", ""), args))
    cmd = [sys.executable, "-m", f"ros_nodes.{executable}", *extra] + (["--ros-args", *ros_args] if ros_args else [])
    return Process(name, cmd, *process_options(body, args), env=env)


class Launcher:
    """Starts every process, prefixes its output, respawns, and on Ctrl-C/SIGTERM or a required exit stops them all."""

    def __init__(self, processes: list[Process], grace_s: float = 10.0, out=sys.stdout) -> None:
        self.processes, self.grace_s, self.out = processes, grace_s, out
        self.running: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.exit_code = 0

    def log(self, name: str, line: str) -> None:
        with self.lock:
            self.out.write(f"[{name}] {line}" if line.endswith("\n") else f"[{name}] {line}\n")
            self.out.flush()

    def start(self, p: Process) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0", **p.env)
        proc = subprocess.Popen(p.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)  # our own signal goes to each child exactly once
        self.running[p.name] = proc
        threading.Thread(target=self.pump, args=(p, proc), daemon=True).start()
        self.log("launch", f"started {p.name} (pid {proc.pid})")

    def pump(self, p: Process, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.log(p.name, line)
        code = proc.wait()
        if self.stop.is_set():
            return
        self.log("launch", f"{p.name} exited with code {code}")
        if p.required:
            self.log("launch", f"{p.name} is required (on_exit: shutdown): shutting down")
            self.exit_code = code or 1
            self.stop.set()
        elif p.respawn:
            time.sleep(p.respawn_delay)
            if not self.stop.is_set():
                self.start(p)

    def run(self) -> int:
        handlers = {sig: signal.signal(sig, lambda *_: self.stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for p in self.processes:
                self.start(p)
            while not self.stop.wait(0.2):
                if self.running and all(proc.poll() is not None for proc in self.running.values()) and not any(p.respawn for p in self.processes):
                    break
        finally:
            self.shutdown()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return self.exit_code

    def shutdown(self) -> None:
        self.stop.set()
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        for name, proc in self.running.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log("launch", f"{name} ignored SIGINT for {self.grace_s:.0f} s: killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launch_main(path: str, assignments: list[str]) -> int:
    overrides = {}
    for a in assignments:
        if ":=" not in a:
            raise ConfigError(f"launch arguments are name:=value, got {a!r}")
        name, value = a.split(":=", 1)
        overrides[name] = value
    processes, _ = parse_launch(path, overrides)
    return Launcher(processes).run()
