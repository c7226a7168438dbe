"""An interpreter that looks like the project's GPU machine's: this checkout's srserve is not
installed there (bench/gpu_env.sh maps the checkout onto the namespace), and neither are the
serving packages unless wheels travel. Tests of the device scripts run them with
``env(tmp_path)``, so a script that only works where srserve is pip-installed fails here too."""
from __future__ import annotations

import os
import sys
from pathlib import Path

SITECUSTOMIZE = '''import sys
# the editable install of srserve (.venv) is a meta-path finder: drop it
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
BLOCKED = {blocked!r}


class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (device-like interpreter)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
'''


def env(folder: Path, *, serving: bool = True) -> dict[str, str]:
    """Environment for a device script: PYTHON is this interpreter without srserve (and without
    the serving packages unless ``serving``)."""
    folder.mkdir(parents=True, exist_ok=True)
    blocked = [] if serving else ["fastapi", "uvicorn", "pydantic_settings", "multipart"]
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    environment = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(folder)}
    environment.pop("OUT", None)
    return environment
