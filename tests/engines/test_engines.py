"""Every registered engine stores what the default engine stores; a new engine is one class and one
registry line, picked up by the command line and by this contract test with no edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from keypatch.batch import run_propose
from keypatch.cli.main import main
from keypatch.engines import ENGINES, Engine, get_engine, register_engine
from keypatch.store import ResultStore


@pytest.fixture(scope="module")
def images(tmp_path_factory, photo_dir):
    d = tmp_path_factory.mktemp("engine-images")
    for src in sorted(photo_dir.iterdir())[:2]:
        Image.open(src).resize((80, 64)).save(d / f"{src.stem}.png")
    (d / "broken.png").write_bytes(b"not a png")
    return d


def _records(out: Path) -> dict[str, tuple[list[int], list[float]]]:
    with ResultStore(out, read_only=True) as s:
        return {r.sha256: (r.patches, r.losses) for r in s.records()}


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("process")
    summary = run_propose(images, 0.25, model="random:toy", out_dir=out, progress=False, engine="process")
    assert summary["done"] == 2 and summary["failed"] == 1
    return _records(out)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_stores_the_default_engines_records(name, images, reference, tmp_path):
    if name == "ray":
        pytest.importorskip("ray.data")
    try:
        summary = run_propose(images, 0.25, model="random:toy", out_dir=tmp_path, progress=False,
                              engine=get_engine(name))
    finally:
        if name == "ray":
            import ray

            ray.shutdown()
    assert summary["engine"] == name and summary["done"] == 2 and summary["failed"] == 1
    assert _records(tmp_path) == reference
    again = run_propose(images, 0.25, model="random:toy", out_dir=tmp_path, progress=False, engine=get_engine(name))
    assert again["done"] == 0 and again["skipped"] == 2  # stored images are not computed again


def test_the_process_engine_reads_file_uris_and_names_the_engine_for_object_storage(images, reference, tmp_path):
    summary = run_propose(images.resolve().as_uri(), 0.25, model="random:toy", out_dir=tmp_path / "a", progress=False)
    assert summary["done"] == 2 and _records(tmp_path / "a") == reference
    with pytest.raises(ValueError, match="s3://bucket/images: the process engine reads files on this machine.*"
                                         "--engine ray"):
        run_propose("s3://bucket/images", 0.25, model="random:toy", out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="not on the host 'elsewhere'"):
        run_propose(f"file://elsewhere{images.resolve()}", 0.25, model="random:toy", out_dir=tmp_path / "b",
                    progress=False)
    assert not (tmp_path / "b").exists()


def test_the_command_line_takes_a_uri_and_says_which_engine_reads_it(tmp_path, capsys):
    assert main(["propose", "s3://bucket/images", "--ratio", "0.1", "--model", "random:toy",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--engine ray" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["propose", str(tmp_path / "nothing"), "--ratio", "0.1", "--out", str(tmp_path / "b")]) == 2


def test_engines_are_values_and_the_former_name_still_works():
    assert get_engine("local") == get_engine("process") == ENGINES["process"]()
    ray = ENGINES["ray"](workers=3)
    assert get_engine(ray) is ray
    with pytest.raises(dataclasses.FrozenInstanceError):
        ray.workers = 4
    with pytest.raises(ValueError, match="engine must be one of"):
        get_engine("nosuch")


@pytest.fixture
def one_at_a_time():
    """A throw-away engine: one file, one class, one registry line (here, the decorator)."""

    @register_engine
    @dataclasses.dataclass(frozen=True)
    class OneAtATime(Engine):
        name = "one-at-a-time"
        description = "each image alone, no decoding ahead"

        def run(self, job, files, batch_size, poll):
            try:
                waiting = []
                for f in files:
                    waiting += job.process([f])
                job.wait_for(waiting, 1, poll)
            finally:
                job.finish()

    yield OneAtATime
    del ENGINES["one-at-a-time"]


def test_a_new_engine_is_picked_up_by_the_command_line(one_at_a_time, images, reference, tmp_path, capsys):
    assert main(["propose", str(images), "--ratio", "0.25", "--model", "random:toy", "--quiet",
                 "--engine", "one-at-a-time", "--out", str(tmp_path), "--json"]) == 0
    assert '"engine": "one-at-a-time"' in capsys.readouterr().out
    assert _records(tmp_path) == reference
