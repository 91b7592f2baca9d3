"""What the promotion-gate tests share: a tiny retrieval job YAML over planted interests, and
the real service (`python -m plexus.serving`) in a subprocess following a registry alias."""

from __future__ import annotations

from pathlib import Path

from plexus.serving import process

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-retrieval"
# A model that barely moved from its initialisation: a real bundle through the same export,
# which a trained one beats on the held-out lists.
WEAK = ("train.lr=0.000001", "train.epochs=1")


def write_lightgcn(folder: Path) -> Path:
    """train.txt / test.txt of 120 users with planted interests (6 groups of 15 items)."""
    from plexus.pipelines.retrieval.synthetic import planted_interests

    data, _ = planted_interests(
        num_users=120, num_groups=6, items_per_group=15, per_user=12, test_per_user=3
    )
    folder.mkdir(parents=True)
    for split, indptr, items in (
        ("train", data.train_indptr, data.train_items),
        ("test", data.test_indptr, data.test_items),
    ):
        lines = [
            " ".join(
                map(str, [int(data.user_ids[u]), *data.item_ids[items[indptr[u] : indptr[u + 1]]]])
            )
            for u in range(1, data.num_users + 1)
        ]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def tiny_retrieval_yaml(tmp: Path, tracking_uri: str) -> Path:
    """A retrieval job YAML (in-process training, gate on, Recall/NDCG@5) tracked at
    `tracking_uri`, outputs under `tmp/runs`."""
    data = write_lightgcn(tmp / "data")
    path = tmp / "tiny.yaml"
    path.write_text(
        "name: tiny\n"
        f"data: {{format: lightgcn, path: {data}}}\n"
        "model: {dim: 8, history_len: 8}\n"
        "train: {epochs: 6, batch_size: 128, num_negatives: 32, lr: 0.02,"
        " loss: sampled_softmax, temperature: 0.2, threads: 1}\n"
        "knn_embed: {num_clusters: 4, neighbors: 3}\n"
        "eval: {ks: [5, 10]}\n"
        f"export: {{registered_model: {MODEL}, alias: champion}}\n"
        "promote: {gate: true, metric: ndcg, k: 5, margin: 0.0}\n"
        f'tracking: {{uri: "{tracking_uri}", experiment: tiny-promote}}\n'
        f"output: {tmp / 'runs'}\n"
        "use_ray: false\n"
    )
    return path


def version_tags(tracking_uri: str, version: str) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return dict(client.get_model_version(MODEL, version).tags)


def champion(tracking_uri: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


class ServiceProcess(process.ServiceProcess):
    """`python -m plexus.serving --model tiny-retrieval@champion` on 127.0.0.1, polling fast."""

    def __init__(self, tracking_uri: str, folder: Path) -> None:
        super().__init__(
            f"{MODEL}@champion",
            log=folder / "service.log",
            tracking_uri=tracking_uri,
            cache_dir=folder / "dl",
            poll_interval=0.3,
            extra=("--log-level", "info"),
            cwd=ROOT,
        )

    def version(self) -> str | None:
        """The version /readyz reports, None while not ready."""
        ready = self.readiness()
        return None if ready is None else str(ready["version"])

    def wait_for(self, version: str, timeout: float = 120) -> None:
        self.wait_ready(timeout, version=version)

    def retrieve(self, user_id: int) -> dict:
        status, answer = self.post("/v1/retrieve", {"user_id": user_id, "k": 5})
        assert status == 200, answer
        return answer
