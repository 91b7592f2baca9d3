"""The service fails fast when nothing can be served, instead of never becoming ready."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def _serve(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plexus.serving", "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,  # a service that never exits fails the test here
    )


@pytest.mark.reliability("fault", "service start with a missing bundle folder: exit 2 naming it")
def test_a_missing_bundle_folder_ends_the_service_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    done = _serve("--model", str(missing))
    assert done.returncode == 2
    assert "nothing to serve" in done.stderr and "no-such-bundle" in done.stderr


@pytest.mark.reliability("fault", "service start with an unknown alias, model or version: exit 2")
@pytest.mark.parametrize("model", ["startup@no-such-alias", "startup/99"])
def test_an_unknown_alias_model_or_version_ends_the_service(registry, bundle_dirs, model) -> None:
    # A model of its own: registering `retr` again would move `retr@champion`, which the
    # session's service (conftest) serves and test_app expects at version 1, when pytest-xdist
    # runs both files on one worker.
    registry.register("startup", bundle_dirs["v1"])
    done = _serve("--model", model, "--tracking-uri", registry.uri)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "nothing to serve" in done.stderr and model.split("@")[0].split("/")[0] in done.stderr


@pytest.mark.reliability("bundle", "broken first bundle: the service exits 2 instead of hanging")
def test_a_broken_first_bundle_ends_the_service(bundle_dirs, tmp_path: Path) -> None:
    done = _serve("--model", str(bundle_dirs["broken"]), "--cache-dir", str(tmp_path / "dl"))
    assert done.returncode == 2
    assert "nothing to serve" in done.stderr and "broken" in done.stderr
