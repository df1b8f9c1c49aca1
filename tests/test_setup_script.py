"""scripts/setup.sh picks the interpreter to install into (scripts/python_env.sh),
checked with --dry-run, which installs nothing.

On a stock Debian/Ubuntu Python, pip refuses the system interpreter (PEP 668: an
EXTERNALLY-MANAGED file in its stdlib). That interpreter is reproduced here with a
PYTHONHOME whose stdlib is this Python's own, linked file by file, plus the marker;
a real `venv` (without pip) stands for "already inside a virtualenv".
"""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def _dry_run(**env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_EDGE_VENV") and k != "VIRTUAL_ENV"}
    env.update(env_overrides)
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "setup.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def _externally_managed_home(tmp_path):
    """A PYTHONHOME for this interpreter whose stdlib carries PEP 668's marker."""
    stdlib = sysconfig.get_path("stdlib")
    home = tmp_path / "home"
    fake = home / os.path.relpath(stdlib, sys.base_prefix)
    fake.mkdir(parents=True)
    for name in os.listdir(stdlib):
        os.symlink(os.path.join(stdlib, name), fake / name)
    (fake / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a virtualenv\n")
    return str(home)


def _is_externally_managed(python, env=None):
    code = "import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    return subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_a_free_interpreter_is_used_as_is():
    if sys.prefix != sys.base_prefix or _is_externally_managed(sys.executable) == "True":
        pytest.skip("this Python is not a plain, pip-installable interpreter")
    rc, out, _ = _dry_run(PYTHON=sys.executable)
    assert rc == 0 and out == sys.executable


def test_externally_managed_interpreter_gets_the_project_virtualenv(tmp_path):
    if sys.prefix != sys.base_prefix:
        pytest.skip("running inside a virtualenv: its PYTHONHOME cannot be replaced")
    home = _externally_managed_home(tmp_path)
    assert _is_externally_managed(sys.executable, dict(os.environ, PYTHONHOME=home)) == "True"  # the fake holds
    rc, out, err = _dry_run(PYTHON=sys.executable, PYTHONHOME=home)
    assert (rc, out) == (0, os.path.join(REPO, ".venv", "bin", "python")), err
    venv_dir = str(tmp_path / "elsewhere")
    rc, out, _ = _dry_run(PYTHON=sys.executable, PYTHONHOME=home, SAM_EDGE_VENV_DIR=venv_dir)
    assert out == os.path.join(venv_dir, "bin", "python")
    assert not os.path.exists(venv_dir)  # a dry run creates nothing
    rc, out, _ = _dry_run(PYTHON=sys.executable, PYTHONHOME=home, SAM_EDGE_VENV="0")
    assert out == sys.executable


def test_inside_a_virtualenv_it_is_used_and_the_venv_can_be_forced(tmp_path):
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    rc, out, _ = _dry_run(PYTHON=python)
    assert rc == 0 and out == python
    rc, out, _ = _dry_run(PYTHON=python, SAM_EDGE_VENV="1")
    assert out == os.path.join(REPO, ".venv", "bin", "python")


def test_bad_switch_is_refused():
    rc, out, err = _dry_run(SAM_EDGE_VENV="yes")
    assert rc == 2 and "SAM_EDGE_VENV must be 0, 1 or unset" in err and out == ""
