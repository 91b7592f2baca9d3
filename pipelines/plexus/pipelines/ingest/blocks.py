"""The I/O half of the streamed ingest: input files cut into blocks at line ends (gzip and zstd
decompressed, raw bytes fingerprinted) or Parquet files read in batches of
`PARQUET_BATCH_ROWS` rows, the spill that keeps pass 1's parsed blocks for the later passes, an
ordered map of a task over workers (threads or Ray tasks) and the shard writer that appends rows
in fixed row groups."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from plexus.pipelines.files import with_errno
from plexus.pipelines.ingest.delimited import BOM, count_byte
from plexus.pipelines.ingest.encode import to_arrow
from plexus.platform.errors import DataError, PlexusError

BLOCK_BYTES = 16 << 20  # input bytes read per block (fixed: row groups must not depend on it)
ROW_GROUP = 1 << 17  # rows per Parquet row group of the shards
# Rows of a Parquet input per block: what one task holds (fixed: blocks must not depend on it).
PARQUET_BATCH_ROWS = 1 << 16
SPLITS = ("train", "valid", "test")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Block:
    """One piece of one input file: text ending at a line end, or a batch of Parquet rows."""

    index: int
    file_index: int
    file: str
    given: int | None  # the split of a given-split file (0 train, 1 valid, 2 test), else None
    data: bytes | pa.RecordBatch
    line_offset: int  # lines (Parquet: rows) of the file before this block


def open_input(file: Path, digest: Any | None = None) -> Iterator[bytes]:
    """The decompressed bytes of `file` in pieces of `BLOCK_BYTES` (`.gz`, `.zst`/`.zstd` by
    name); `digest` (a hashlib object) is fed the raw bytes, on a thread of its own for plain
    files. A corrupt or truncated stream is a DataError naming the file."""
    codec = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}.get(file.suffix.lower())
    try:
        raw = file.open("rb")
    except IsADirectoryError:
        raise DataError(f"expected a file, got a folder: {file}") from None
    except OSError as exc:
        raise DataError(f"cannot read input file {file}: {exc.strerror or exc}") from None
    hashing: collections.deque[concurrent.futures.Future[None]] = collections.deque()
    with raw, concurrent.futures.ThreadPoolExecutor(max_workers=1) as hasher:
        stream: Any = raw
        if codec:
            source = _Hashing(raw, digest) if digest is not None else raw
            stream = pa.CompressedInputStream(pa.PythonFile(source, mode="r"), codec)
        while True:
            try:
                piece = stream.read(BLOCK_BYTES)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(
                    f"{file}: not a readable {codec} file ({exc}); the file is truncated or "
                    "corrupt: copy it again, or remove it from the input"
                ) from None
            if not piece:
                return
            if digest is not None and not codec:
                if len(hashing) > 1:  # a starved hash thread must not queue the whole file
                    hashing.popleft().result()
                hashing.append(hasher.submit(digest.update, piece))  # in order: one thread
            yield piece


class _Hashing:
    """A raw file that feeds every byte it reads to a hash."""

    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest, self.closed = raw, digest, False

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data

    def close(self) -> None:
        self.closed = True


def read_blocks(
    ordered: list[tuple[str, Path]],
    given: bool,
    fingerprint: Callable[[Path, int, int], str | None],
    prints: list[dict[str, Any]],
) -> Iterator[Block]:
    """Every file's blocks in order; appends each file's fingerprint once it is read."""
    index = 0
    for file_index, (split, file) in enumerate(ordered):
        stat = file.stat()
        cached = fingerprint(file, stat.st_size, stat.st_mtime_ns)
        digest = hashlib.sha256() if cached is None else None
        lines, carry, first = 0, b"", True
        for piece in open_input(file, digest):
            if first:
                piece, first = (piece[len(BOM) :] if piece.startswith(BOM) else piece), False
            end = piece.rfind(b"\n") + 1
            if end == 0:  # no line end in a whole piece: a very long line
                carry += piece
                continue
            # One copy at most: the carried part line before this piece's first line end.
            block = b"".join((carry, memoryview(piece)[:end])) if carry else piece[:end]
            carry = piece[end:]
            yield Block(index, file_index, str(file), SPLITS.index(split) if given else None,
                        block, lines)  # fmt: skip
            index, lines = index + 1, lines + count_byte(block, b"\n")
        if carry:
            yield Block(index, file_index, str(file), SPLITS.index(split) if given else None,
                        carry, lines)  # fmt: skip
            index += 1
        sha = cached if digest is None else digest.hexdigest()
        prints.append({"path": str(file), "size": stat.st_size, "sha256": sha})


def read_parquet_blocks(
    ordered: list[tuple[str, Path]],
    given: bool,
    fingerprint: Callable[[Path, int, int], str | None],
    prints: list[dict[str, Any]],
    columns: list[str],
) -> Iterator[Block]:
    """Every Parquet file's rows in batches of `PARQUET_BATCH_ROWS` (only `columns`, in the
    file's order), in order; appends each file's fingerprint once it is read.

    pyarrow decodes one batch at a time, so memory holds a batch (and the pages of the row group
    it comes from), whatever the file's size. The file's bytes are hashed on a thread of their
    own (a Parquet reader seeks, so the hash cannot ride on its reads).
    """
    index = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as hasher:
        for file_index, (split, file) in enumerate(ordered):
            stat = file.stat()
            cached = fingerprint(file, stat.st_size, stat.st_mtime_ns)
            digest = hasher.submit(_sha256, file) if cached is None else None
            try:
                reader = pq.ParquetFile(file)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{file}: not a readable Parquet file: {exc}") from None
            try:
                names = reader.schema_arrow.names
                missing = [c for c in columns if c not in names]
                if missing:
                    raise DataError(
                        f"{file}: declared column {missing[0]!r} not found (data.schema); "
                        f"columns: {names}"
                    )
                wanted = [n for n in names if n in columns]
                rows = 0
                batches = reader.iter_batches(
                    batch_size=PARQUET_BATCH_ROWS, columns=wanted, use_threads=False
                )
                while True:
                    try:
                        batch = next(batches, None)
                    except (OSError, pa.ArrowException) as exc:
                        raise DataError(
                            f"{file}: not a readable Parquet file after row {rows:,} ({exc}); the "
                            "file is truncated or corrupt: copy it again, or remove it from the input"
                        ) from None
                    if batch is None:
                        break
                    yield Block(index, file_index, str(file), SPLITS.index(split) if given else None,
                                batch, rows)  # fmt: skip
                    index, rows = index + 1, rows + batch.num_rows
            finally:
                reader.close()
            sha = cached if digest is None else digest.result()
            prints.append({"path": str(file), "size": stat.st_size, "sha256": sha})


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        while chunk := fh.read(BLOCK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class BlockSpill:
    """Pass 1's parsed blocks on disk, so that the later passes read them back instead of
    parsing the input again: one uncompressed Arrow IPC file per block (written and memory
    mapped back at memory speed), deleted once read for the last time. About 220 bytes a
    Criteo row: the input's size, never its whole in memory."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.blocks: list[Block] = []

    def write(self, block: Block, frame: pl.DataFrame) -> None:
        """Keep `block`'s parsed (and coded) `frame` (from any thread)."""
        path = self._path(block)
        try:
            frame.write_ipc(path, compression="uncompressed")
        except OSError as exc:  # a full disk: name the errno and the file
            raise with_errno(exc, path) from exc
        self.blocks.append(dataclasses.replace(block, data=b""))

    def read(self, *, last: bool = False) -> Iterator[tuple[Block, pl.DataFrame]]:
        """Every block in order with its frame; `last`: delete each once read."""
        for block in sorted(self.blocks, key=lambda b: b.index):
            frame = pl.read_ipc(self._path(block))
            if last:
                self._path(block).unlink()
            yield block, frame

    def _path(self, block: Block) -> Path:
        return self.folder / f"{block.index:07d}.arrow"


def ordered_map(
    task: Callable[..., R],
    args: Iterable[tuple[Any, ...]],
    workers: int,
    *,
    broadcast: Iterable[Any] = (),
) -> Iterator[R]:
    """`task(*a)` for each `a`, run `window` at a time, yielded in order. On Ray, the
    `broadcast` arguments (large, the same for every task) go to the object store once."""
    pending: collections.deque[Any] = collections.deque()
    it = iter(args)
    if workers > 0:
        import ray
        from plexus.pipelines.runtime import ensure_ray

        ensure_ray()
        remote = ray.remote(num_cpus=1)(task)
        shared = {id(x): ray.put(x) for x in broadcast}

        def submit(a: tuple[Any, ...]) -> Any:
            return remote.remote(*(shared.get(id(x), x) for x in a))

        def get(ref: Any) -> R:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # a bad input: its own message, no trace
                if isinstance(exc.cause, PlexusError):
                    raise exc.cause from None
                raise

        window = workers
    else:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        window = (os.cpu_count() or 1) + 1

        def submit(a: tuple[Any, ...]) -> Any:
            return pool.submit(task, *a)

        def get(f: Any) -> R:
            return f.result()

    try:
        for a in it:
            pending.append(submit(a))
            if len(pending) >= window:
                yield get(pending.popleft())
        while pending:
            yield get(pending.popleft())
    finally:
        if workers <= 0:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)


class ShardWriter:
    """Appends encoded rows to one split's shards: `rows_per_shard` rows per file, written in
    row groups of `ROW_GROUP` rows whatever the blocks were.

    `whole_shards`: each shard is written by one call, in pyarrow's default row groups, i.e.
    the bytes `pq.write_table` gives for the shard's rows (Parquet inputs keep the bytes the
    whole-table ingest wrote); memory then holds up to `rows_per_shard` encoded rows.
    """

    def __init__(
        self,
        folder: Path,
        schema: pa.Schema,
        rows_per_shard: int,
        compression: str | None,
        *,
        whole_shards: bool = False,
    ) -> None:
        folder.mkdir()
        self.folder, self.schema, self.per_shard = folder, schema, rows_per_shard
        self.compression, self.whole_shards = compression, whole_shards
        self.names: list[str] = []
        self.writer: pq.ParquetWriter | None = None
        self.in_shard = 0
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame)
        self.pending_rows += frame.height
        while self.pending_rows >= self._room():
            self._flush(self._room())

    def close(self) -> list[str]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self.writer.close()
        return self.names

    def _room(self) -> int:
        left = self.per_shard - self.in_shard
        return left if self.whole_shards else min(ROW_GROUP, left)

    def _flush(self, n: int) -> None:
        frame = pl.concat(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, rest = frame.slice(0, n), frame.slice(n)
        self.pending, self.pending_rows = ([rest] if rest.height else []), rest.height
        if self.writer is None:
            name = f"part-{len(self.names):05d}.parquet"
            self.names.append(name)
            self.writer = pq.ParquetWriter(
                self.folder / name, self.schema, compression=self.compression
            )
        self.writer.write_table(
            to_arrow(head, self.schema), row_group_size=None if self.whole_shards else n
        )
        self.in_shard += n
        if self.in_shard == self.per_shard:
            self.writer.close()
            self.writer, self.in_shard = None, 0
