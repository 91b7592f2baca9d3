"""The retrieval bundle: load without torch, answer queries, exclusions, cold start, batching."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plexus.platform.errors import DataError, RegistryError
from plexus.serving.bundle import Bundle


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from plexus.pipelines.retrieval.synthetic import planted_bundle

    folder, data, _, _, _ = planted_bundle(tmp_path_factory.mktemp("bundle") / "b")
    return folder, data


def test_loads_and_answers_without_torch(planted) -> None:
    folder, data = planted
    user = int(data.user_ids[5])
    code = f"""
import sys
sys.modules["torch"] = None  # any torch import now fails
sys.modules["ray"] = None
from plexus.serving.bundle import Bundle
b = Bundle.load({str(folder)!r})
hits = b.recommend(user_id={user}, k=10)
assert len(hits.item_ids) == 10, hits
print("ok", b.version)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("diversify", [True, False])
def test_recommend_returns_k_unique_unseen_items_with_clusters(planted, diversify) -> None:
    folder, data = planted
    bundle = Bundle.load(folder)
    internal = 7
    hits = bundle.recommend(user_id=int(data.user_ids[internal]), k=15, diversify=diversify)
    assert len(hits.item_ids) == 15 and len(set(hits.item_ids.tolist())) == 15
    seen = data.item_ids[data.train_of(internal)]
    assert not np.isin(hits.item_ids, seen).any()
    lookup = {int(e): i for i, e in enumerate(data.item_ids)}
    clusters = bundle.item_clusters[[lookup[int(i)] for i in hits.item_ids]]
    assert hits.clusters.tolist() == clusters.tolist()
    assert np.all(np.diff(hits.scores) <= 1e-6) or diversify
    assert hits.version == bundle.manifest["bundle_id"]


def test_exclusions_history_only_users_and_cold_start(planted) -> None:
    folder, data = planted
    bundle = Bundle.load(folder, version="7")
    user = int(data.user_ids[3])
    first = bundle.recommend(user_id=user, k=5)
    again = bundle.recommend(user_id=user, k=5, exclude=first.item_ids[:2].tolist())
    assert not np.isin(first.item_ids[:2], again.item_ids).any()
    assert again.version == "7"
    history = data.item_ids[data.train_of(3)].tolist()
    new_user = bundle.recommend(history=history, k=10)
    assert len(new_user.item_ids) == 10 and not np.isin(new_user.item_ids, history).any()
    cold = bundle.recommend(user_id=10**9, k=4)
    assert (
        cold.item_ids.tolist()
        == data.item_ids[np.argsort(-data.item_popularity()[1:], kind="stable")[:4] + 1].tolist()
    )
    with pytest.raises(DataError):
        bundle.recommend(user_id=user, k=0)


def test_batch_matches_single_requests(planted) -> None:
    folder, data = planted
    bundle = Bundle.load(folder)
    users = [int(u) for u in data.user_ids[1:6]] + [None]
    histories = [[], [], [int(data.item_ids[1])], [], [], [int(data.item_ids[2])]]
    batch = bundle.recommend_batch(users, histories, k=12)
    for user, hist, got in zip(users, histories, batch, strict=True):
        one = bundle.recommend(user_id=user, history=hist, k=12)
        assert got.item_ids.tolist() == one.item_ids.tolist()


def test_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path, planted) -> None:
    with pytest.raises(RegistryError, match="bundle.json"):
        Bundle.load(tmp_path)
    folder, _ = planted
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["format_version"] = 99
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="not supported"):
        Bundle.load(bad)


@pytest.mark.reliability("bundle", "bundle file truncated or altered: refused at load")
@pytest.mark.parametrize(
    "name", ["query.onnx", "items.faiss", "history_bytes.npy", "feature_spec.json"]
)
def test_a_truncated_or_altered_file_is_refused_at_load(tmp_path: Path, planted, name) -> None:
    folder, _ = planted
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    file = copy / name
    if not file.is_file():
        pytest.skip(f"this bundle has no {name}")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(RegistryError, match=f"{name}: sha256 differs"):
        Bundle.load(copy)
    file.unlink()
    with pytest.raises(RegistryError, match=f"{name} is missing"):
        Bundle.load(copy)


@pytest.mark.reliability("bundle", "manifest naming a path outside the bundle: refused")
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(tmp_path: Path, planted) -> None:
    folder, _ = planted
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="outside the bundle"):
        Bundle.load(copy)
