"""Every key of every bundled CTR job config, set to values of the wrong type or range: the
config either loads or fails with a `ConfigError` that names the key, never anything else."""

from __future__ import annotations

import pytest
from plexus.pipelines.config import bundled_config, load_job_config
from plexus.platform import config as config_io
from plexus.platform.errors import ConfigError

CTR_CONFIGS = ["criteo", "avazu", "movielens", "movielens_1m", "synthetic"]
BAD_VALUES = ["x", "-1", "0", "1.5", "[1, 2]", "{a: 1}", "null", "true", "''", "1e400"]


@pytest.mark.reliability("input", "every config key with wrong values: loads or names the key")
@pytest.mark.parametrize("name", CTR_CONFIGS)
def test_every_key_with_wrong_values_loads_or_names_the_key(
    name: str, monkeypatch, record_property
) -> None:
    monkeypatch.setenv("PLEXUS_DATA", "/data")
    path = bundled_config(name)
    keys = sorted(config_io.flatten(load_job_config(path)))
    assert len(keys) > 20
    tried = named = 0
    for key in keys:
        for value in BAD_VALUES:
            tried += 1
            try:
                load_job_config(path, [f"{key}={value}"])
            except ConfigError as exc:
                named += 1
                leaf = key.rsplit(".", 1)[-1]
                assert leaf in str(exc) or key.split(".")[0] in str(exc), (key, value, str(exc))
    record_property("inputs", tried)
    record_property("refused_naming_the_key", named)
    assert named > tried // 3  # most wrong values are refused (a test that cannot fail is none)
