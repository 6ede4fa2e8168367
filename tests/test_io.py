import json

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


# Every output whole, current and from one run (issue 15), shards shared by nodes (issue 16).

def test_a_shard_of_another_fingerprint_is_not_done_and_a_folder_holding_one_is_refused(tmp_path):
    import shutil

    from pipeline.io import IncompleteShardsError

    ShardedWriter(tmp_path / "old", {"n": 48}).write(0, table([1]))
    writer = ShardedWriter(tmp_path / "out", {"n": 1})
    writer.write(1, table([2]))
    shutil.copy(tmp_path / "old" / "part-00000.parquet", tmp_path / "out" / "part-00000.parquet")  # a stray shard
    assert not writer.is_done(0) and writer.is_done(1)
    assert not writer.finish(2)  # not marked complete with a foreign shard in it
    (tmp_path / "out" / "_complete.json").write_text('{"shards": 2, "fingerprint_hash": "%s"}' % writer.fingerprint_hash)
    with pytest.raises(IncompleteShardsError, match="part-00000.parquet was written for other parameters"):
        read_table(tmp_path / "out")


def test_a_folder_whose_manifest_vanished_mid_clear_is_refused(tmp_path):
    from pipeline.io import MANIFEST, IncompleteShardsError

    writer = ShardedWriter(tmp_path / "traces", {"a": 1})
    writer.write(0, table([1]))
    writer.complete(1)
    (tmp_path / "traces" / MANIFEST).unlink()  # a kill while clearing stale shards: manifest gone, shards left
    with pytest.raises(IncompleteShardsError, match="no _manifest.json"):
        read_table(tmp_path / "traces")


def test_a_writer_with_other_parameters_is_refused_while_one_runs_and_same_parameters_cooperate(tmp_path):
    import os

    from pipeline.io import ConcurrentRunError, ShardPart

    first = ShardedWriter(tmp_path / "traces", {"n": 48}, part=ShardPart(0, 2))
    first.write(0, table([1]))
    with pytest.raises(ConcurrentRunError, match=f"pid {os.getpid()} on .*fingerprint {first.fingerprint_hash}"):
        ShardedWriter(tmp_path / "traces", {"n": 1})
    assert first.is_done(0), "the refused writer removed nothing"
    second = ShardedWriter(tmp_path / "traces", {"n": 48}, part=ShardPart(1, 2))  # another node, same fingerprint
    assert first.todo(4) == [2] and second.todo(4) == [1, 3]
    for index in second.todo(4):
        second.write(index, table([index + 1]))
    assert not second.finish(4)  # shard 2 is the first node's, still missing
    first.write(2, table([3]))
    assert first.finish(4)  # the last writer marks the folder complete
    assert read_table(tmp_path / "traces").column("x").to_pylist() == [1, 2, 3, 4]
    first.close(), second.close()
    fresh = ShardedWriter(tmp_path / "traces", {"n": 1})  # no one writes any more: other parameters start afresh
    assert fresh.todo(4) == [0, 1, 2, 3] and not (tmp_path / "traces" / "part-00000.parquet").exists()


def test_writers_remove_only_their_own_hosts_dead_temporary_files(tmp_path):
    import os
    import subprocess

    from pipeline.io import HOST

    exited = subprocess.Popen(["true"])
    exited.wait()  # reaped: its pid is free
    folder = tmp_path / "traces"
    first = ShardedWriter(folder, {"a": 1})
    dead = f".part-00001.parquet~{HOST}~{exited.pid}.tmp"
    names = {dead, f".part-00002.parquet~other-node~{os.getpid()}.tmp", f".part-00003.parquet~{HOST}~{os.getpid()}.tmp"}
    for name in names:
        (folder / name).write_bytes(b"partial")
    ShardedWriter(folder, {"a": 1})  # joins the first writer: may only remove dead processes' files on this host
    left = {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}
    assert left == names - {dead}
    first.close()
    ShardedWriter(folder, {"a": 1})  # alone on the folder: every temporary file is stale
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_table_set_cut_between_two_files_is_refused(tmp_path):
    from pipeline.io import IncompleteOutputError, write_table_set

    train, evaluation = tmp_path / "problems" / "train.parquet", tmp_path / "problems" / "eval.parquet"
    write_table_set({train: table([1]), evaluation: table([2])})
    assert read_table(train).column("x").to_pylist() == [1]
    first_run = train.read_bytes()
    write_table_set({train: table([3]), evaluation: table([4])})
    train.write_bytes(first_run)  # as if the second run died after eval.parquet: old train, new eval
    with pytest.raises(IncompleteOutputError, match=r"train.parquet belongs with .*eval.parquet.*from another run.*mrt prepare-problems"):
        read_table(train)
    with pytest.raises(IncompleteOutputError, match="mrt prepare-problems"):
        read_table(evaluation)
    evaluation.unlink()
    with pytest.raises(IncompleteOutputError, match="missing"):
        read_table(train)


def test_shard_parts_are_checked():
    from pipeline.io import ShardPart

    assert [i for i in range(7) if ShardPart(2, 3).owns(i)] == [2, 5]
    with pytest.raises(ValueError, match="shard-index 3"):
        ShardPart(3, 3)


def test_every_output_names_the_command_that_writes_it():
    from pathlib import Path

    from pipeline.paths import writer_command

    data = Path("data")
    assert writer_command(data / "rounds" / "0" / "traces") == "mrt sample -r 0"
    assert writer_command(data / "arms" / "star" / "rounds" / "1" / "prover") == "mrt prove -r 1 --arm star"
    assert writer_command(data / "arms" / "mrt" / "rounds" / "0" / "model") == "mrt train -r 0 --arm mrt"
    assert writer_command(data / "rounds" / "0" / "regret.parquet") == "mrt score -r 0"
    assert writer_command(data / "problems" / "eval.parquet") == "mrt prepare-problems"
    assert writer_command(data / "base_model") == "mrt prepare-model"
    assert writer_command(data / "eval" / "mrt" / "2" / "traces") == "mrt evaluate -r 2 --arm mrt"
    assert writer_command(data / "eval" / "base" / "prover") == "mrt evaluate -r 0"


def test_the_code_version_ignores_comments_and_docstrings():
    from pipeline.io import _code_of, code_version

    plain = 'x = 1\n\ndef f():\n    return x\n'
    assert _code_of('"""Module."""\nx = 1  # one\n\ndef f():\n    """Why."""\n    return x\n') == _code_of(plain)
    assert _code_of(plain.replace("return x", "return -x")) != _code_of(plain)
    assert len(code_version()) == 16


def _fake_code_root(tmp_path, monkeypatch):
    from pipeline import io

    root = tmp_path / "code"
    (root / "pipeline").mkdir(parents=True, exist_ok=True)
    (root / "stages").mkdir(exist_ok=True)
    (root / "pipeline" / "a.py").write_text('"""Doc."""\nx = 1\n')
    (root / "stages" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(io, "_CODE_ROOT", root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    io.code_version.cache_clear()
    return root


def test_the_code_version_is_remembered_for_exactly_the_code_it_was_computed_from(tmp_path, monkeypatch):
    """Every stage process needs the code version; parsing every module each time cost 0.3 s a stage.
    A remembered version is read back only for the same files and bytes, and is the computed one."""
    from pipeline import io

    root = _fake_code_root(tmp_path, monkeypatch)
    first = io.code_version()
    assert first == io._computed_code_version(io._code_sources())
    assert io.code_cache_file().is_file()

    def no_parsing(source):
        raise AssertionError("parsed although the version is remembered")

    io.code_version.cache_clear()
    monkeypatch.setattr(io, "_code_of", no_parsing)
    assert io.code_version() == first  # read back, not computed
    monkeypatch.undo()
    root = _fake_code_root(tmp_path, monkeypatch)  # the same code again, the cache kept
    (root / "stages" / "b.py").write_text("y = 3\n")  # other code: computed, not read back
    io.code_version.cache_clear()
    changed = io.code_version()
    assert changed != first and changed == io._computed_code_version(io._code_sources())
    (root / "stages" / "b.py").write_text("y = 3  # a comment\n")  # other bytes, same code: same version
    io.code_version.cache_clear()
    assert io.code_version() == changed
    io.code_version.cache_clear()


def test_an_unreadable_or_unwritable_code_cache_only_costs_the_computation(tmp_path, monkeypatch):
    from pipeline import io

    _fake_code_root(tmp_path, monkeypatch)
    expected = io._computed_code_version(io._code_sources())
    cache_file = io.code_cache_file()
    cache_file.parent.mkdir(parents=True)
    for garbage in ("{not json", "[1, 2]", '{"versions": [["only one"], 5, ["k", 7]]}'):
        cache_file.write_text(garbage)
        io.code_version.cache_clear()
        assert io.code_version() == expected
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")  # the cache folder cannot be made
    io.code_version.cache_clear()
    assert io.code_version() == expected
    monkeypatch.delenv("XDG_CACHE_HOME")

    def homeless():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(io.Path, "home", staticmethod(homeless))  # no home: no cache, the same version
    io.code_version.cache_clear()
    assert io.code_version() == expected
    io.code_version.cache_clear()


def test_the_code_cache_keeps_a_bounded_number_of_versions(tmp_path, monkeypatch):
    from pipeline import io

    root = _fake_code_root(tmp_path, monkeypatch)
    for value in range(io._CODE_CACHE_ENTRIES + 5):
        (root / "pipeline" / "a.py").write_text(f"x = {value}\n")
        io.code_version.cache_clear()
        io.code_version()
    versions = json.loads(io.code_cache_file().read_text())["versions"]
    assert len(versions) == io._CODE_CACHE_ENTRIES and versions[-1][1] == io.code_version()
    io.code_version.cache_clear()
