"""The package imports as `fedcrm.*` from the repo root, from elsewhere and inside Flower's loader."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from fedcrm.paths import REPO_ROOT

ROLE_MODULES = ["fedcrm.client.flower_app", "fedcrm.consent.ledger", "fedcrm.coordinator.server_app",
                "fedcrm.models.nets", "fedcrm.protocol", "fedcrm.cli"]


def _import_in(cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import importlib;" + "".join(f"importlib.import_module({m!r});" for m in ROLE_MODULES) + \
        "import fedcrm.client as c; print(c.__file__)"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_imports_work_from_the_repo_root() -> None:
    result = _import_in(REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == REPO_ROOT / "client"


def test_imports_work_from_elsewhere(tmp_path: Path) -> None:
    result = _import_in(tmp_path)
    assert result.returncode == 0, result.stderr


def test_imports_work_inside_flowers_app_loader_with_the_repo_root_as_project_dir() -> None:
    # Flower's loader puts the project directory first on sys.path: a repo-root folder
    # named `fedcrm/` would shadow the installed package here.
    code = (
        "from flwr.supercore.object_ref import load_app\n"
        "from flwr.clientapp import ClientApp\n"
        "from flwr.server import ServerApp\n"
        f"c = load_app('fedcrm.client.flower_app:app', RuntimeError, {str(REPO_ROOT)!r})\n"
        f"s = load_app('fedcrm.coordinator.server_app:app', RuntimeError, {str(REPO_ROOT)!r})\n"
        "assert isinstance(c, ClientApp) and isinstance(s, ServerApp)\n"
        "import sys; assert sys.path[0] == " + repr(str(REPO_ROOT)) + ", sys.path[:3]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_no_repo_root_folder_shadows_the_package() -> None:
    assert not (REPO_ROOT / "fedcrm").exists()


def test_every_sub_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in mapping.items():
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == set(config["packages"])


def test_console_script_has_a_group_per_role_and_the_demo() -> None:
    from typer.testing import CliRunner

    from fedcrm.cli import app

    out = CliRunner().invoke(app, ["--help"]).output
    for command in ("client", "coordinator", "consent", "demo"):
        assert command in out


def test_importing_fedcrm_switches_off_phone_home() -> None:
    code = ("import os\nos.environ['FLWR_TELEMETRY_ENABLED']='1'\nimport fedcrm\n"
            "assert os.environ['FLWR_TELEMETRY_ENABLED']=='0' and os.environ['RAY_USAGE_STATS_ENABLED']=='0'\n"
            "assert os.environ['FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION']=='1'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
