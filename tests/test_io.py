import pyarrow as pa
import pytest

from pipeline.io import ShardedWriter, chunked, read_table, write_table

SCHEMA = pa.schema([("x", pa.int64())])


def table(values):
    return pa.Table.from_pylist([{"x": v} for v in values], schema=SCHEMA)


def test_shards_resume_and_read_in_order(tmp_path):
    writer = ShardedWriter(tmp_path / "out", {"a": 1})
    writer.write(1, table([3, 4]))
    writer.write(0, table([1, 2]))
    (tmp_path / "out" / ".part-00002.parquet.123.tmp").write_bytes(b"partial")  # a crashed write
    again = ShardedWriter(tmp_path / "out", {"a": 1})
    assert again.is_done(0) and again.is_done(1) and not again.is_done(2)
    again.complete(2)
    assert read_table(tmp_path / "out").column("x").to_pylist() == [1, 2, 3, 4]


def test_changed_fingerprint_clears_stale_shards(tmp_path):
    ShardedWriter(tmp_path / "out", {"a": 1}).write(0, table([1]))
    fresh = ShardedWriter(tmp_path / "out", {"a": 2})
    assert not fresh.is_done(0)
    from pipeline.io import IncompleteShardsError

    with pytest.raises(IncompleteShardsError):  # the stale shard is gone and nothing new is finished
        read_table(tmp_path / "out", SCHEMA)


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_table(tmp_path / "nope.parquet")


def test_atomic_write_and_chunks(tmp_path):
    write_table(table([1]), tmp_path / "a.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]
    assert list(chunked([1, 2, 3], 2)) == [(0, [1, 2]), (1, [3])]


def test_an_unfinished_shard_folder_is_refused(tmp_path):
    from pipeline.io import IncompleteShardsError

    writer = ShardedWriter(tmp_path / "out", {"a": 1})
    writer.write(0, table([1]))  # a crash after shard 0 of 2
    with pytest.raises(IncompleteShardsError, match="did not finish"):
        read_table(tmp_path / "out")
    with pytest.raises(RuntimeError, match="missing"):
        writer.complete(2)
    writer.write(1, table([2]))
    writer.complete(2)
    assert read_table(tmp_path / "out").column("x").to_pylist() == [1, 2]
    again = ShardedWriter(tmp_path / "out", {"a": 1})  # same parameters: still complete
    assert read_table(tmp_path / "out").num_rows == 2 and again.is_done(1)
