"""Data sources: every kind of `path` (compressed JSON Lines, Arrow files in both IPC formats, globs,
directories split by the `datasets` library's naming rules, `save_to_disk` directories, local
`data_files` through `datasets.load_dataset`, JSON Lines in a .json file) yields the same prepared
rows, and unreadable input is an error naming the file (or, at config time, the config line)."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from trainer.api.resolved import Resolved
from trainer.config.errors import ConfigErrors
from trainer.data.pipeline import Prepared, build_datasets
from trainer.data.readers import DataError
from trainer.resolve.validate import load_config

BOS, EOS = 1, 2

ROWS = [{"prompt": f"word {w}\n", "generation": w[::-1]} for w in ("abc", "hello", "xyz", "trainer", "ok")]
OTHER = [{"prompt": f"say {w}: ", "generation": w} for w in ("one", "two", "three")]


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids, computed independently: one token per UTF-8 byte, id = byte + 3."""
    return [b + 3 for b in text.encode("utf-8")]


def expected(rows: list[dict[str, str]]) -> list[list[int]]:
    return [[BOS, *ids(r["prompt"]), *ids(r["generation"]), EOS] for r in rows]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl(rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS, EOS)
    assert tok("héllo", add_special_tokens=False).input_ids == ids("héllo")
    return tok


@pytest.fixture
def resolve(write_config, tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a config over the given dataset entries (a path, or a dict of path + source keys such
    as split/data_files) and load it. `shuffle: false` keeps file order."""

    def make(entries: list[Path | dict[str, Any]], extra: str = "") -> Resolved:
        datasets = ""
        for entry in entries:
            spec = {"path": entry} if isinstance(entry, Path) else entry
            datasets += f"  - path: {json.dumps(str(spec['path']))}\n"
            datasets += "    type: prompt_completion\n    completion_field: generation\n"
            for key, value in spec.items():
                if key != "path":
                    datasets += f"    {key}: {json.dumps(value)}\n"
        text = f"base_model: {tiny_model}\ndatasets:\n{datasets}output_dir: {tmp_path / 'out'}\n"
        return load_config(str(write_config(text + "shuffle: false\n" + extra)))

    return make


def prepare(resolved: Resolved, tokenizer: Any) -> Prepared:
    return build_datasets(resolved, tokenizer)


def train_ids(resolved: Resolved, tokenizer: Any) -> list[list[int]]:
    return prepare(resolved, tokenizer).train["input_ids"]


# ---- each source kind reads the same rows ------------------------------------------------------


def test_jsonl_gz(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(jsonl(ROWS[:2]) + "\n" + "{broken\n" + jsonl(ROWS[2:]))  # line 3 blank, 4 bad
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    prepared = prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)
    assert prepared.train["input_ids"] == expected(ROWS)
    assert prepared.report.dropped["bad"] == 1
    assert prepared.report.first_bad_rows[0].startswith(f"{path}:4  bad: invalid JSON")  # line of the text


def test_arrow_file_written_by_save_to_disk(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import datasets
    import pyarrow as pa

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (arrow,) = sorted((tmp_path / "saved").glob("data-*.arrow"))
    with pa.memory_map(str(arrow)) as source:
        assert pa.ipc.open_stream(source).read_all().num_rows == len(ROWS)  # the stream format
    assert train_ids(resolve([arrow]), tokenizer) == expected(ROWS)


def test_arrow_ipc_file_format(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    path = tmp_path / "rows.arrow"
    table = pa.Table.from_pylist(ROWS)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)  # several record batches
    assert path.read_bytes()[:6] == b"ARROW1"  # the file format, not the stream format
    with pa.memory_map(str(path)) as source:
        assert pa.ipc.open_file(source).num_record_batches == 3
    assert train_ids(resolve([path]), tokenizer) == expected(ROWS)


def test_glob_reads_its_matches_in_sorted_order(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "parts"
    write_jsonl(folder / "c.jsonl", ROWS[3:])  # written out of order
    write_jsonl(folder / "a.jsonl", ROWS[:1])
    write_jsonl(folder / "b.jsonl", ROWS[1:3])
    write_jsonl(folder / "skip.json", OTHER)  # not matched by *.jsonl
    (folder / "notes.txt").write_text("not data\n", encoding="utf-8")
    prepared = prepare(resolve([folder / "*.jsonl"], "on_bad_rows: skip\n"), tokenizer)
    assert prepared.train["input_ids"] == expected(ROWS)
    assert prepared.report.rows_read == len(ROWS)


def test_directory_split_by_file_names(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "splits"
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test.jsonl", OTHER)
    assert train_ids(resolve([{"path": folder, "split": "train"}]), tokenizer) == expected(ROWS)
    assert train_ids(resolve([folder]), tokenizer) == expected(ROWS)  # split defaults to train
    assert train_ids(resolve([{"path": folder, "split": "test"}]), tokenizer) == expected(OTHER)
    # the datasets library's aliases: dev.jsonl is the validation split
    write_jsonl(folder / "dev.jsonl", OTHER[:1])
    assert train_ids(resolve([{"path": folder, "split": "validation"}]), tokenizer) == expected(OTHER[:1])
    assert train_ids(resolve([{"path": folder, "split": "train"}]), tokenizer) == expected(ROWS)


def test_directory_unknown_split_lists_the_splits_found(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "splits"
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test.jsonl", OTHER)
    with pytest.raises(DataError) as caught:
        prepare(resolve([{"path": folder, "split": "valid"}]), tokenizer)
    assert caught.value.where == str(folder)
    assert caught.value.message.startswith("no files for split 'valid'; found splits: ")
    found = caught.value.message.split("found splits: ")[1].split(", ")
    assert sorted(found) == ["test", "train"]


def test_directory_of_unnamed_files_is_all_train(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "unnamed"
    write_jsonl(folder / "second.jsonl", ROWS[2:])
    write_jsonl(folder / "first.jsonl", ROWS[:2])
    assert train_ids(resolve([folder]), tokenizer) == expected(ROWS)  # sorted: first, second
    with pytest.raises(DataError, match=r"no files for split 'test'; found splits: train$"):
        prepare(resolve([{"path": folder, "split": "test"}]), tokenizer)


def test_save_to_disk_dataset(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    assert (folder / "state.json").is_file()
    assert train_ids(resolve([folder]), tokenizer) == expected(ROWS)


def test_save_to_disk_dataset_dict_with_split(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import datasets

    folder = tmp_path / "saved-dict"
    splits = {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(OTHER)}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    assert (folder / "dataset_dict.json").is_file()
    assert train_ids(resolve([folder]), tokenizer) == expected(ROWS)
    assert train_ids(resolve([{"path": folder, "split": "test"}]), tokenizer) == expected(OTHER)
    with pytest.raises(DataError) as caught:
        prepare(resolve([{"path": folder, "split": "nope"}]), tokenizer)
    assert caught.value.where == str(folder)
    assert caught.value.message.startswith("cannot load dataset: KeyError")


def test_data_files_on_a_local_directory_go_through_load_dataset(  # type: ignore[no-untyped-def]
    resolve, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # not ~/.cache
    real, calls = datasets.load_dataset, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    folder = tmp_path / "repo"
    write_jsonl(folder / "part-b.jsonl", ROWS[2:])
    write_jsonl(folder / "part-a.jsonl", ROWS[:2])
    write_jsonl(folder / "unused.jsonl", OTHER)
    entry = {"path": folder, "split": "train", "data_files": ["part-a.jsonl", "part-b.jsonl"]}
    assert train_ids(resolve([entry]), tokenizer) == expected(ROWS)
    assert calls and all(args == (str(folder),) for args, _ in calls)
    assert calls[0][1] == {
        "name": None,
        "split": "train",
        "data_files": ["part-a.jsonl", "part-b.jsonl"],
        "revision": None,
        "trust_remote_code": False,  # never a dataset's loading script
    }
    # the order of data_files is kept, and a single file may be given as a string
    calls.clear()
    entry = {"path": folder, "data_files": "unused.jsonl"}
    assert train_ids(resolve([entry]), tokenizer) == expected(OTHER)
    assert calls[0][1]["data_files"] == "unused.jsonl"

    # rows are located by their number in the loaded split: "PATH row N" (the path exists locally,
    # so no "[split]" is added), counted across all the data files
    write_jsonl(folder / "part-b.jsonl", [ROWS[2], {"prompt": "no answer"}])
    entry = {"path": folder, "data_files": ["part-a.jsonl", "part-b.jsonl"]}
    with pytest.raises(DataError) as caught:
        prepare(resolve([entry]), tokenizer)
    assert caught.value.where == f"{folder} row 4"
    assert caught.value.message.startswith("missing field 'generation'")


def test_json_file_holding_json_lines(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rows.json"
    path.write_text(jsonl(ROWS), encoding="utf-8")
    assert train_ids(resolve([path]), tokenizer) == expected(ROWS)
    # read line by line, so a bad line is named by its line number
    path.write_text(jsonl(ROWS[:2]) + '{"prompt": "x", "generation": }\n' + jsonl(ROWS[2:]), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == f"{path}:3"
    assert caught.value.message.startswith("invalid JSON")
    prepared = prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)
    assert prepared.train["input_ids"] == expected(ROWS)


# ---- bad input names the file -----------------------------------------------------------------


def gzipped_rows() -> bytes:
    return gzip.compress(jsonl(ROWS * 20).encode("utf-8"), mtime=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "a", "generation": "b"}\n', "cannot read: Not a gzipped file"),
        (
            gzipped_rows()[: len(gzipped_rows()) // 2],
            "cannot read: Compressed file ended before the end-of-stream marker",
        ),
        (gzipped_rows()[:-8] + b"\0\0\0\0" + gzipped_rows()[-4:], "cannot read: CRC check failed"),
    ],
    ids=["not-gzip", "truncated", "bad-crc"],
)
def test_corrupt_jsonl_gz_is_a_data_error(  # type: ignore[no-untyped-def]
    resolve, tokenizer: Any, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)  # not a row problem: never skipped
    assert caught.value.where == str(path)
    assert caught.value.message.startswith(message)


def test_corrupt_deflate_data_in_jsonl_gz_is_a_data_error(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = gzipped_rows()
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(good[:10] + b"\x07" + good[11:])  # gzip header, then a deflate block of type 3
    with pytest.raises(zlib.error):
        gzip.decompress(path.read_bytes())
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == str(path)
    assert caught.value.message.startswith("cannot read")


def arrow_stream(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=50)
    return sink.getvalue().to_pybytes()


def arrow_file(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=50)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"this is not an Arrow file\n" * 10,
        lambda: b"",
        lambda: arrow_stream(ROWS * 60)[:-3000],  # a stream cut in a record batch
        lambda: arrow_stream(ROWS)[:100],  # a stream cut in its schema
        lambda: arrow_file(ROWS * 60)[:-40],  # a file without its footer
    ],
    ids=["garbage", "empty", "stream-cut-in-batch", "stream-cut-in-schema", "file-no-footer"],
)
def test_corrupt_arrow_is_a_data_error(resolve, tokenizer: Any, tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rows.arrow"
    path.write_bytes(make())
    with pytest.raises(DataError) as caught:
        prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)
    assert caught.value.where == str(path)
    assert caught.value.message.startswith("cannot read Arrow file: ")


def test_glob_without_matches_is_a_config_error(resolve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_jsonl(tmp_path / "data" / "rows.jsonl", ROWS)
    pattern = tmp_path / "data" / "*.jsnl"
    with pytest.raises(ConfigErrors) as caught:
        resolve([write_jsonl(tmp_path / "ok.jsonl", ROWS), pattern])
    (problem,) = caught.value.problems
    assert problem.where == f"{tmp_path / 'cfg.yml'}:6"  # the second entry's path line
    lines = (tmp_path / "cfg.yml").read_text(encoding="utf-8").splitlines()
    assert lines[5] == f'  - path: "{pattern}"'
    assert problem.path == ("datasets", 1, "path")
    assert problem.message == f"no file matches the pattern '{pattern}'"
    assert f"cfg.yml:6  datasets[1].path: no file matches the pattern '{pattern}'" in caught.value.render()


def test_missing_local_jsonl_is_a_config_error(resolve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nowhere" / "rows.jsonl"
    with pytest.raises(ConfigErrors) as caught:
        resolve([missing])
    (problem,) = caught.value.problems
    assert problem.where == f"{tmp_path / 'cfg.yml'}:3"
    assert problem.path == ("datasets", 0, "path")
    assert problem.message == f"dataset '{missing}' does not exist"


# ---- CSV line numbers -------------------------------------------------------------------------


def test_csv_short_row_is_named_by_its_line(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "short.csv"
    path.write_text("prompt,generation\na,b\nc,d\ne\nf,g\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == f"{path}:4"
    assert caught.value.message.startswith("missing field 'generation'")


def test_csv_multiline_record_is_named_by_its_last_line(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "multiline.csv"
    text = (
        "prompt,generation\n"  # 1
        "a,b\n"  # 2
        '"one\n'  # 3  a record over lines 3-5
        "two\n"  # 4
        'three",ok\n'  # 5
        "c\n"  # 6  too few columns
        '"four\n'  # 7  a record over lines 7-8, too few columns
        'five"\n'  # 8
        "d,e\n"  # 9
    )
    path.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    prepared = prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)
    good = [
        {"prompt": "a", "generation": "b"},
        {"prompt": "one\ntwo\nthree", "generation": "ok"},
        {"prompt": "d", "generation": "e"},
    ]
    assert prepared.train["input_ids"] == expected(good)
    assert prepared.report.dropped["bad"] == 2
    first, second = prepared.report.first_bad_rows
    assert first == f"{path}:6  bad: missing field 'generation'"
    assert second == f"{path}:7  bad: missing field 'generation'"  # the line where the record starts
    assert lines[7 - 1] == '"four'
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == f"{path}:6"
    assert os.path.isfile(caught.value.where.rsplit(":", 1)[0])


def test_a_file_that_is_not_utf8_is_a_data_error(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("latin1.csv", "latin1.json"):
        path = tmp_path / name
        text = (
            "prompt,generation\ncafé,x\n"
            if name.endswith(".csv")
            else '[{"prompt": "café", "generation": "x"}]'
        )
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(DataError) as caught:
            prepare(resolve([path]), tokenizer)
        assert caught.value.where == str(path) and caught.value.message.startswith("cannot read")
