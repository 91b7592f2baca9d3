from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
from plexus.platform.config import apply_overrides, flatten, from_dict, load
from plexus.platform.errors import ConfigError


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)
    color: Color = Color.RED


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    inner: Inner = Inner()
    path: str | None = None


def test_nested_values_are_coerced() -> None:
    cfg = from_dict(Outer, {"name": "x", "inner": {"lr": 1, "sizes": [3], "color": "blue"}})
    assert cfg.inner == Inner(lr=1.0, sizes=(3,), color=Color.BLUE)
    assert isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "inner": {"lrr": 1}}, "unknown config key 'inner.lrr'"),
        ({"name": "x", "inner": {"lr": "fast"}}, "inner.lr: expected float"),
        ({"name": "x", "inner": {"color": "green"}}, "inner.color: must be one of 'red', 'blue'"),
        ({"name": "x", "inner": {"sizes": "1,2"}}, "inner.sizes: expected a list"),
        ({"inner": {}}, "name"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_dict(Outer, data)


def test_yaml_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("name: a\ninner: {lr: 0.5}\npath: ${DATA_ROOT:-/data}/x.tsv\n")
    cfg = load(Outer, file, ["inner.sizes=[4, 5]", "inner.color=blue"])
    assert cfg.inner == Inner(lr=0.5, sizes=(4, 5), color=Color.BLUE)
    assert cfg.path == "/data/x.tsv"
    monkeypatch.setenv("DATA_ROOT", "/mnt")
    assert load(Outer, file).path == "/mnt/x.tsv"
    with pytest.raises(ConfigError, match=str(file)):
        load(Outer, file, ["inner.bogus=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["inner.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load(Outer, tmp_path / "missing.yaml")


def test_unset_env_without_default_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text("name: ${PLEXUS_SURELY_UNSET_VAR}\n")
    with pytest.raises(ConfigError, match="PLEXUS_SURELY_UNSET_VAR is not set"):
        load(Outer, file)


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten(Outer(name="a"))
    assert flat["inner.lr"] == 0.1 and flat["inner.color"] == "red" and flat["name"] == "a"


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing required config key 'name'"):
        from_dict(Outer, {"inner": {"lr": 0.5}})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load(Outer, empty)


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text("name: a\ninner:\n  lr: 0.5\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml.*'lr' is given twice \(lines 3 and 4\)"):
        load(Outer, config)
