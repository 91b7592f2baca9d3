"""The package layout keeps the standard library's `platform` module intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AREAS = ("platform", "models", "pipelines", "serving")


def test_stdlib_platform_not_shadowed_from_repository_root() -> None:
    code = "import platform, plexus.platform; print(platform.__file__); print(platform.system())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert not out[0].startswith(str(ROOT)), f"stdlib platform shadowed by {out[0]}"
    assert out[1]  # platform.system() works


def test_namespace_has_no_init_at_roots() -> None:
    for area in AREAS:
        assert not (ROOT / area / "__init__.py").exists(), f"{area}/__init__.py shadows imports"
        assert not (ROOT / area / "plexus" / "__init__.py").exists(), (
            f"{area}/plexus must be a namespace"
        )
        assert (ROOT / area / "plexus" / area / "__init__.py").is_file()


def test_models_and_serving_import_boundaries() -> None:
    """`models` never imports ray/mlflow/onnxruntime; `serving` never imports torch or ray."""
    banned = {"models": ("ray", "mlflow", "onnxruntime"), "serving": ("torch", "ray", "torchrec")}
    for area, modules in banned.items():
        for source in (ROOT / area).rglob("*.py"):
            for line in source.read_text().splitlines():
                stripped = line.strip()
                for module in modules:
                    assert not stripped.startswith(
                        (f"import {module}", f"from {module} ", f"from {module}.")
                    ), f"{source.relative_to(ROOT)} imports {module}: {stripped}"
