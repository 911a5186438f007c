"""The ``notebookos`` command: help, kernelspec install/show/remove, the ``lab`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from notebookos import __version__
from notebookos import kernelspec as ks
from notebookos.cli import DEFAULT_KERNEL_FLAG, lab_command, main

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Jupyter data/config dirs are private to the test, and that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["JUPYTER_PATH"] = str(tmp_path / "prefix" / "share" / "jupyter")
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "data")
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


def _run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "notebookos", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, f"notebookos {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["kernelspec"],
        ["kernelspec", "install"],
        ["kernelspec", "remove"],
        ["kernelspec", "show"],
        ["lab"],
    ],
    ids=lambda a: " ".join(a) or "notebookos",
)
def test_help(args: list[str], tmp_path: Path) -> None:
    proc = _run([*args, "--help"], _env(tmp_path))
    assert proc.stdout.startswith("usage: notebookos")
    assert "--help" in proc.stdout


def test_top_level_help_lists_subcommands(tmp_path: Path) -> None:
    out = _run(["--help"], _env(tmp_path)).stdout
    assert "kernelspec" in out and "lab" in out


def test_version(tmp_path: Path) -> None:
    assert _run(["--version"], _env(tmp_path)).stdout.strip() == f"notebookos {__version__}"


def test_kernelspec_install_prefix_and_jupyter_lists_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    prefix = tmp_path / "prefix"
    proc = _run(["kernelspec", "install", "--prefix", str(prefix), "--replicas", "3"], env)
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "notebookos"
    assert str(spec_dir) in proc.stdout

    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (replicated)"
    assert spec["interrupt_mode"] == "message"
    assert spec["argv"][1:] == ["-m", "notebookos.kernel.front", "-f", "{connection_file}"]
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "notebookos-provisioner",
        "config": {"replicas": 3},
    }
    assert spec["metadata"]["debugger"] is False
    assert (spec_dir / "logo-64x64.png").is_file()

    # Jupyter only lists a kernelspec whose provisioner is registered as an entry point.
    names = [ep.name for ep in entry_points(group="jupyter_client.kernel_provisioners")]
    assert "notebookos-provisioner" in names, (
        "install the package (pip install -e .) to register the provisioner"
    )
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    specs = json.loads(listed.stdout)["kernelspecs"]
    assert "notebookos" in specs, listed.stderr
    assert Path(specs["notebookos"]["resource_dir"]) == spec_dir
    assert specs["notebookos"]["spec"]["display_name"] == "Python 3 (replicated)"

    # remove --prefix takes it away again
    _run(["kernelspec", "remove", "--prefix", str(prefix)], env)
    assert not spec_dir.exists()
    assert _run(["kernelspec", "remove", "--prefix", str(prefix)], env, check=False).returncode == 1


def test_remove_finds_spec_on_jupyter_path(tmp_path: Path) -> None:
    env = _env(tmp_path)
    prefix = tmp_path / "prefix"
    _run(["kernelspec", "install", "--prefix", str(prefix)], env)
    proc = _run(["kernelspec", "remove"], env)
    assert "Removed" in proc.stdout
    assert not (prefix / "share" / "jupyter" / "kernels" / "notebookos").exists()


def test_kernelspec_show_matches_kernel_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernelspec", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == ks.kernel_json()
    assert shown["metadata"]["kernel_provisioner"]["config"] == {}
    assert shown["argv"][0] == sys.executable


def test_bad_replicas_names_the_option(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args in (
        ["kernelspec", "install", "--prefix", str(tmp_path / "p"), "--replicas", "0"],
        ["kernelspec", "show", "--replicas", "zero"],
        ["lab", "--replicas", "-1"],
        ["kernelspec", "show", "--replicas", "1000"],
    ):
        proc = _run(args, env, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--replicas" in proc.stderr
        assert "from 1 to 15" in proc.stderr or "must be an integer" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_kernel_json_validates_replicas() -> None:
    assert ks.kernel_json(2)["metadata"]["kernel_provisioner"]["config"] == {"replicas": 2}
    for bad in (0, -3, 1.5, True, "3"):
        with pytest.raises(ValueError, match="replicas"):
            ks.kernel_json(bad)  # type: ignore[arg-type]


def test_unknown_argument_is_an_error(tmp_path: Path) -> None:
    proc = _run(["kernelspec", "show", "--bogus"], _env(tmp_path), check=False)
    assert proc.returncode == 2
    assert "--bogus" in proc.stderr


def test_lab_command() -> None:
    cmd = lab_command(["--port", "8899", "--no-browser", "--ServerApp.token="])
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--MultiKernelManager.default_kernel_name=notebookos" in cmd
    assert cmd[-4:] == ["--port", "8899", "--no-browser", "--ServerApp.token="]
    assert cmd.index(DEFAULT_KERNEL_FLAG) < cmd.index("--port")


def test_lab_parses_passthrough_args(monkeypatch: pytest.MonkeyPatch) -> None:
    """`notebookos lab` installs the kernelspec, then execs JupyterLab with the extra arguments."""
    installed: list[tuple[bool, str | None, int | None]] = []
    execed: list[list[str]] = []

    def fake_install(user: bool = False, prefix: str | None = None, replicas: int | None = None) -> str:
        installed.append((user, prefix, replicas))
        return "/somewhere/notebookos"

    monkeypatch.setattr(ks, "install_kernelspec", fake_install)
    monkeypatch.setattr(ks, "read_replicas", lambda spec_dir: None)
    monkeypatch.setattr(os, "execvp", lambda file, args: execed.append(list(args)))
    main(["lab", "--replicas", "2", "--port", "8899", "--", "--help"])
    assert len(installed) == 1 and installed[0][2] == 2
    assert execed == [lab_command(["--port", "8899", "--help"])]


def test_default_kernel_flag_configures_jupyter_server() -> None:
    """The flag names a trait jupyter_server's kernel manager really has (a typo would be ignored by Lab)."""
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from traitlets.config.loader import KVArgParseConfigLoader

    config = KVArgParseConfigLoader([DEFAULT_KERNEL_FLAG]).load_config()
    assert AsyncMappingKernelManager(config=config).default_kernel_name == "notebookos"


def test_lab_keeps_installed_replicas_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`kernelspec install --replicas 4` followed by a plain `notebookos lab` keeps replicas=4."""
    spec_dir = ks.install_kernelspec(prefix=str(tmp_path), replicas=4)
    assert ks.read_replicas(spec_dir) == 4
    assert ks.read_replicas(tmp_path / "missing") is None

    installed: list[int | None] = []

    def fake_install(user: bool = False, prefix: str | None = None, replicas: int | None = None) -> str:
        installed.append(replicas)
        return spec_dir

    monkeypatch.setattr(ks, "kernelspec_dir", lambda user=False, prefix=None: spec_dir)
    monkeypatch.setattr(ks, "install_kernelspec", fake_install)
    monkeypatch.setattr(os, "execvp", lambda file, args: None)
    main(["lab", "--no-browser"])
    assert installed == [4]
