"""Avazu, MovieLens (three layouts) and Parquet readers, time splits and multi-valued genres."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plexus.pipelines.data.synth import synth_movielens
from plexus.pipelines.ingest import DataConfig, DataFormat, ParquetSchema, SplitConfig, ingest
from plexus.pipelines.ingest.readers import AVAZU_COLUMNS, read_avazu
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import FeatureKind


def _read(result, split: str) -> pl.DataFrame:  # noqa: ANN001
    return pl.concat([pl.read_parquet(p) for p in result.shards(split)])


def _avazu_line(i: int, click: object = 0, hour: object = None) -> str:
    hour = hour if hour is not None else 14102100 + (i % 24)
    rest = [
        1005,
        i % 2,
        f"site{i % 3}",
        "dom",
        "cat",
        "app",
        "adom",
        "acat",
        f"dev{i}",
        "ip",
        "model",
        1,
        0,
    ]
    return ",".join(
        str(v) for v in [10**19 + i, click, hour, *rest, 15704, 320, 50, 1722, 0, 35, -1, 79]
    )


def test_avazu_header_detection_rejects_and_time_split(tmp_path: Path) -> None:
    lines = [_avazu_line(i, click=i % 2) for i in range(50)]
    lines[3] = _avazu_line(3, click=7)
    lines[7] = _avazu_line(7, hour="14x02100")
    with_header = tmp_path / "train.csv"
    with_header.write_text(",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    bare = tmp_path / "dev.csv"
    bare.write_text("\n".join(lines) + "\n")
    a, b = read_avazu(with_header), read_avazu(bare)
    assert a.frame.drop("__line").equals(b.frame.drop("__line"))
    assert a.rejects["line"].to_list() == [5, 9] and b.rejects["line"].to_list() == [4, 8]
    assert a.rejects["reason"].to_list() == ["bad_label", "bad_hour"]
    assert a.frame["hour_of_day"].to_list()[:3] == ["0", "1", "2"]
    assert a.frame["weekday"].unique().to_list() == ["2"]  # 2014-10-21 was a Tuesday
    cfg = DataConfig(
        format=DataFormat.AVAZU, path=str(with_header), max_reject_ratio=0.1,
        split=SplitConfig(by="time", valid=0.2, test=0.2),
    )  # fmt: skip
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rows == {"train": 28, "valid": 10, "test": 10}
    # Latest hours (19-23) are test, 14-18 valid: unseen in training, so OOV there.
    assert max(int(h) for h in result.spec["hour_of_day"].vocabulary) == 13
    assert set(_read(result, "test")["hour_of_day"].to_list()) == {0}
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,clicks,hour\n" + "\n".join(lines))
    with pytest.raises(DataError, match=f"{wrong}:1: header"):
        read_avazu(wrong)


def test_movielens_100k_folder_genres_and_time_split(tmp_path: Path) -> None:
    folder = synth_movielens(tmp_path / "ml", users=50, items=60, ratings=3_000, seed=1)
    cfg = DataConfig(
        format=DataFormat.MOVIELENS,
        path=str(folder),
        split=SplitConfig(by="time", valid=0.1, test=0.1),
    )
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    spec = result.spec
    assert [f.name for f in spec.features] == [
        "user_id", "item_id", "gender", "age", "occupation", "zip3", "year", "genres",
    ]  # fmt: skip
    assert spec["genres"].kind is FeatureKind.MULTI_CATEGORICAL and spec["genres"].max_length >= 2
    assert result.rows == {"train": 2_400, "valid": 300, "test": 300} and result.rejects == {}
    schema = pq.read_schema(result.shards("train")[0])
    assert schema.field("genres").type == pa.list_(pa.int64())
    train = _read(result, "train")
    ratings = pl.read_csv(
        folder / "u.data", separator="\t", has_header=False, new_columns=["u", "i", "r", "t"]
    )
    # Time split: the rows in order of time; the first 80% train.
    first = ratings.head(2_400)
    assert train["label"].to_list() == (first["r"] >= 4).cast(pl.Float32).to_list()
    vocab = spec["item_id"].vocabulary
    assert [vocab[i - 1] for i in train["item_id"].head(5).to_list()] == [
        str(i) for i in first["i"].head(5)
    ]
    # Genres of the first rating decode to the u.item flags of its item.
    item_line = (folder / "u.item").read_text().splitlines()[first["i"][0] - 1].split("|")
    from plexus.pipelines.data.synth import GENRES

    expected = sorted(g for g, flag in zip(GENRES, item_line[5:], strict=True) if flag == "1")
    genres = spec["genres"].vocabulary
    assert sorted(genres[i - 1] for i in train["genres"][0].to_list()) == expected


def test_movielens_1m_dat_and_latest_csv(tmp_path: Path) -> None:
    dat = tmp_path / "ml1m"
    dat.mkdir()
    (dat / "ratings.dat").write_text(
        "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n2::30::x::1\n"
    )
    (dat / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (dat / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Caf\xe9 (1999)::Drama\n".encode(
            "latin-1"
        )
    )
    result = ingest(DataConfig(format=DataFormat.MOVIELENS, path=str(dat / "ratings.dat"), valid_path=str(dat / "ratings.dat"),
                               max_reject_ratio=0.5), output=tmp_path / "o1", progress=False)  # fmt: skip
    assert result.rejects == {"bad_rating": 2}  # train and valid read the same file
    records = [json.loads(x) for x in (tmp_path / "o1" / "rejects.jsonl").read_text().splitlines()]
    assert records[0]["line"] == 4
    assert set(result.spec["genres"].vocabulary) == {"Animation", "Children's", "Comedy", "Drama"}
    assert set(result.spec["year"].vocabulary) == {"1995", "1999"}
    train = _read(result, "train")
    assert train["label"].to_list() == [1.0, 0.0, 1.0]
    assert train["genres"].list.len().to_list() == [3, 1, 3]
    assert train["year"].to_list()[1] != 0 and train["gender"].to_list()[0] != 0
    # ml-latest CSVs: header, float ratings, quoted titles with commas, "(no genres listed)".
    csv = tmp_path / "latest"
    csv.mkdir()
    (csv / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.5,10\n1,2,3.5,20\n2,3,0.5,30\n3,1,6.0,40\n"
    )
    (csv / "movies.csv").write_text(
        'movieId,title,genres\n1,"Big, Bad (2001)",Action|Drama\n2,Quiet (2002),(no genres listed)\n'
    )
    latest = ingest(DataConfig(format=DataFormat.MOVIELENS, path=str(csv), valid_path=str(csv), max_reject_ratio=0.5),
                    output=tmp_path / "o2", progress=False)  # fmt: skip
    assert latest.rejects == {"bad_rating": 2}
    assert [f.name for f in latest.spec.features] == ["user_id", "item_id", "year", "genres"]
    rows = _read(latest, "train")
    assert rows["label"].to_list() == [1.0, 0.0, 0.0]
    assert rows["genres"].list.len().to_list() == [2, 0, 0]
    assert set(latest.spec["year"].vocabulary) == {"2001", "2002"}


def test_parquet_with_declared_schema(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    table = pa.table({
        "clicked": [1, 0, 1, 3, 0, 1],
        "user": [1, 2, 1, 2, 3, 1],
        "tags": [["a", "b"], [], ["a"], ["c"], None, ["b"]],
        "price": [1.5, 2.5, None, 4.0, 5.0, 6.0],
        "ts": [1, 2, 3, 4, 5, 6],
        "ignored": ["x"] * 6,
    })  # fmt: skip
    pq.write_table(table.slice(0, 3), folder / "a.parquet")
    pq.write_table(table.slice(3), folder / "b.parquet")
    schema = ParquetSchema(
        label="clicked",
        categorical=("user",),
        multi_categorical=("tags",),
        numeric=("price",),
        time="ts",
    )
    cfg = DataConfig(
        format=DataFormat.PARQUET, path=str(folder), schema=schema, numeric="normalize", max_reject_ratio=0.5,
        split=SplitConfig(by="time", valid=0.0, test=0.2),
    )  # fmt: skip
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rejects == {"bad_label": 1}
    assert result.rows == {"train": 4, "valid": 0, "test": 1}
    records = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert records[0]["file"].endswith("b.parquet") and records[0]["line"] == 1
    assert [f.name for f in result.spec.features] == ["price", "user", "tags"]
    train = _read(result, "train")
    tags = result.spec["tags"].vocabulary
    assert [[tags[i - 1] for i in row] for row in train["tags"].to_list()] == [
        ["a", "b"],
        [],
        ["a"],
        [],
    ]
    assert train["price"].dtype == pl.Float32 and train["price"].to_list()[2] == 0.0
    bad = ParquetSchema(label="clicked", categorical=("nope",))
    with pytest.raises(DataError, match="'nope' not found"):
        ingest(
            DataConfig(format=DataFormat.PARQUET, path=str(folder), schema=bad),
            output=tmp_path / "x",
            progress=False,
        )


def test_rows_of_one_position_in_several_parquet_files_are_split_independently(
    tmp_path: Path,
) -> None:
    """A folder of daily files: row k of each file draws its own split (the key holds the
    file), while a single file keeps the split its row numbers always gave."""
    rows = 400
    # 50 users, each on 8 rows, so every one is in the training vocabulary
    table = pa.table(
        {"clicked": [i % 2 for i in range(rows)], "user": [i % 50 for i in range(rows)]}
    )
    folder = tmp_path / "days"
    folder.mkdir()
    for day in ("day1", "day2"):
        pq.write_table(table, folder / f"{day}.parquet")
    pq.write_table(table, tmp_path / "one.parquet")
    schema = ParquetSchema(label="clicked", categorical=("user",))
    split = SplitConfig(valid=0.0, test=0.5, seed=3)

    def test_users(path: Path, out: str) -> list[int]:
        result = ingest(
            DataConfig(
                format=DataFormat.PARQUET, path=str(path), schema=schema, split=split, min_count=1
            ),
            output=tmp_path / out,
            progress=False,
        )
        vocab = result.spec["user"].vocabulary
        test = _read(result, "test")["user"].to_list()
        return [int(vocab[i - 1]) for i in test]

    both = test_users(folder, "days")
    alone = test_users(tmp_path / "one.parquet", "one")
    first, second = both[: len(alone)], both[len(alone) :]
    assert first == alone  # file 0 keeps its key: the same rows as the file on its own
    assert 0.4 < len(second) / rows < 0.6
    assert second != alone  # the second file's rows are drawn again
