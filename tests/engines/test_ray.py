"""The Ray Data engine: the local engine's records, failures that never stop a job, killed processes.

A local Ray instance with one-thread actors and small models; skipped where Ray is not installed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray.data")

from keypatch.batch import run_propose  # noqa: E402
from keypatch.engines import RayEngine  # noqa: E402
from keypatch.store import ResultStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _ray_down():
    """The in-process tests start a local Ray; stop it when this module is done."""
    yield
    import ray

    ray.shutdown()


def _records(out: Path) -> dict[str, tuple[list[int], list[float]]]:
    path = out / "results.sqlite"
    if not path.exists():
        return {}
    with ResultStore(path, create=False) as s:
        recs = s.records()
    assert len({r.sha256 for r in recs}) == len(recs)  # never one image twice
    return {r.sha256: (r.patches, r.losses) for r in recs}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_dir):
    """12 distinct images (3 photos, 4 crops each) and one file that is not an image."""
    d = tmp_path_factory.mktemp("rayphotos")
    for src in sorted(photo_dir.iterdir()):
        im = Image.open(src)
        for i in range(4):
            w, h = im.size
            im.crop((i * 10, 0, w - 10 * (3 - i), h)).save(d / f"{src.stem}-{i}.jpg", quality=95)
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    return d


def test_ray_engine_stores_what_the_local_engine_stores(photos, tmp_path):
    local = run_propose([photos], 0.25, model="random:toy", out_dir=tmp_path / "local", progress=False)
    ray = run_propose([photos], 0.25, model="random:toy", out_dir=tmp_path / "ray", progress=False,
                      engine=RayEngine(workers=2), batch_size=2)
    assert ray["engine"] == "ray" and ray["done"] == local["done"] == 12
    assert ray["failed"] == local["failed"] == 1 and ray["failed_paths"] == [str(photos / "broken.jpg")]
    got, want = _records(tmp_path / "ray"), _records(tmp_path / "local")
    assert got.keys() == want.keys()
    for key, (patches, losses) in want.items():
        assert got[key][0] == patches and got[key][1] == pytest.approx(losses, rel=1e-6)
    # a re-run filters the stored images out before scheduling anything
    again = run_propose([photos], 0.25, model="random:toy", out_dir=tmp_path / "ray", progress=False, engine="ray")
    assert again["done"] == 0 and again["skipped"] == 12


def test_a_dataset_of_bytes_whose_paths_exist_nowhere_gives_the_local_records(photos, tmp_path):
    """Images given as a Ray Dataset of their bytes, named by URIs that no disk here holds: the
    workers hash and decode them, and the records (picks by content) are the local engine's."""
    import ray
    import ray.data

    if not ray.is_initialized():  # the dataset below would start Ray with this machine's 2 CPUs: too few here
        ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING")
    files = sorted(photos.iterdir())
    rows = [{"bytes": f.read_bytes(), "path": f"s3://bucket/nowhere/{f.name}"} for f in files]
    rows.append({"bytes": files[0].read_bytes(), "path": "s3://bucket/elsewhere/copy.jpg"})  # same content again
    local = run_propose([photos], 0.25, model="random:toy", out_dir=tmp_path / "local", progress=False)
    remote = run_propose(ray.data.from_items(rows), 0.25, model="random:toy", out_dir=tmp_path / "ray",
                         progress=False, engine=RayEngine(workers=2), batch_size=2)
    assert remote["found"] == 14 and remote["done"] == local["done"] == 12 and remote["skipped"] == 1
    assert remote["failed_paths"] == ["s3://bucket/nowhere/broken.jpg"]
    got, want = _records(tmp_path / "ray"), _records(tmp_path / "local")
    assert got.keys() == want.keys()
    for key, (patches, losses) in want.items():
        assert got[key][0] == patches and got[key][1] == pytest.approx(losses, rel=1e-6)
    with ResultStore(tmp_path / "ray" / "results.sqlite", create=False) as s:
        names = {r.image_path for r in s.records()}
        assert names == {f"s3://bucket/nowhere/{f.name}" for f in files if f.name != "broken.jpg"}
    # a re-run claims nothing new: every image is found stored from its digest alone
    again = run_propose(ray.data.from_items(rows), 0.25, model="random:toy", out_dir=tmp_path / "ray",
                        progress=False, engine=RayEngine(workers=2))
    assert again["done"] == 0 and again["skipped"] == 13 and again["failed"] == 1


def test_a_uri_is_read_by_the_workers_and_gives_the_local_records(photos, tmp_path):
    """A folder given as a file:// URI: Ray lists it, the workers read, hash and decode the images,
    and the records are the local engine's (the paths are kept as the images' names)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING")
    run_propose([photos], 0.25, model="random:toy", out_dir=tmp_path / "local", progress=False)
    remote = run_propose(photos.resolve().as_uri(), 0.25, model="random:toy", out_dir=tmp_path / "ray",
                         progress=False, engine=RayEngine(workers=2), batch_size=2)
    assert remote["found"] == 13 and remote["done"] == 12 and remote["failed"] == 1
    assert remote["failed_paths"] == [str((photos / "broken.jpg").resolve())]
    got, want = _records(tmp_path / "ray"), _records(tmp_path / "local")
    assert got.keys() == want.keys() and all(got[k][0] == v[0] for k, v in want.items())
    with ResultStore(tmp_path / "ray" / "results.sqlite", create=False) as s:
        assert {Path(r.image_path) for r in s.records()} == {p.resolve() for p in photos.glob("*-*.jpg")}
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        run_propose((photos / "nothing").resolve().as_uri(), 0.25, model="random:toy", out_dir=tmp_path / "x",
                    progress=False, engine=RayEngine(workers=2))
    with pytest.raises(ValueError, match="every source as a URI or every source as a path"):
        run_propose([photos.as_uri(), photos], 0.25, model="random:toy", out_dir=tmp_path / "x", progress=False,
                    engine=RayEngine(workers=2))
    assert not (tmp_path / "x").exists()


def _start(out: Path, photos: Path, batch: int) -> subprocess.Popen:
    code = ("import sys; from keypatch.cli.main import main; sys.exit(main(['propose', sys.argv[1], '--ratio', "
            "'0.05', '--model', 'random:small', '--engine', 'ray', '--workers', '2', '--batch-size', sys.argv[3], "
            "'--quiet', '--out', sys.argv[2], '--precision', 'float32']))")
    return subprocess.Popen([sys.executable, "-c", code, str(photos), str(out), str(batch)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_records(out: Path, n: int, child: subprocess.Popen, limit: float = 240) -> None:
    t0 = time.time()
    while len(_records(out)) < n:
        assert child.poll() is None, child.communicate()
        assert time.time() - t0 < limit, "no records in time"
        time.sleep(0.5)


def _actor_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ProposeActor"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def test_a_killed_worker_is_retried_and_every_image_stored_once(photos, tmp_path):
    out = tmp_path / "res"
    child = _start(out, photos, 1)
    _wait_for_records(out, 2, child)
    pids = _actor_pids()
    assert pids, "no actor process found"
    os.kill(pids[0], signal.SIGKILL)
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err.decode()[-2000:]
    assert len(_records(out)) == 12


def test_a_killed_driver_loses_nothing_and_the_same_command_finishes(photos, tmp_path):
    out = tmp_path / "res"
    child = _start(out, photos, 1)
    _wait_for_records(out, 2, child)
    os.kill(child.pid, signal.SIGKILL)  # the driver alone
    child.wait(timeout=60)
    time.sleep(1)
    try:  # what it started is not needed for the rerun (a local Ray ends with its driver)
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kept = _records(out)
    assert 2 <= len(kept) < 12
    rerun = _start(out, photos, 1)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    for chatter in ("is deprecated", "Progress bars disabled", "Token authentication"):
        assert chatter not in err.decode()  # Ray's notices to its callers' developers, not to the user
    final = _records(out)
    assert len(final) == 12 and all(final[k] == v for k, v in kept.items())


def test_ray_is_named_when_missing(monkeypatch, photos, tmp_path, capsys):
    import builtins

    from keypatch.cli.main import main

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["propose", str(photos), "--ratio", "0.1", "--engine", "ray", "--out", str(tmp_path)]) == 2
    assert "pip install 'keypatch[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "results.sqlite").exists()


def test_actors_that_leave_no_cpu_for_decoding_are_an_error_not_a_hang():
    """Ray would wait forever for a decoding task's CPU; the engine says so before any work."""
    from types import SimpleNamespace

    def cluster(cpus, gpus=0):
        return SimpleNamespace(cluster_resources=lambda: {"CPU": cpus, "GPU": gpus})

    RayEngine(workers=2, cpus_per_worker=1).check_resources(cluster(3))  # one CPU left for decoding: fine
    with pytest.raises(ValueError, match="2 CPUs.*wait forever"):
        RayEngine(workers=2, cpus_per_worker=1).check_resources(cluster(2))
    with pytest.raises(ValueError, match="GPUs"):
        RayEngine(workers=2, gpus_per_worker=1).check_resources(cluster(8, gpus=1))


def _node_of(pid: int, raylets: dict[int, str]) -> str | None:
    """The node (by its raylet's pid) whose raylet started the worker process ``pid``."""
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None


def test_three_nodes_lose_a_worker_node_mid_run_and_store_every_image_once(photos, tmp_path):
    """A head and two worker nodes (Ray's own cluster_utils.Cluster, each node its own raylet): the
    two actors run on two nodes; a worker node holding one is removed mid-run; the job finishes with
    every image stored once and the local engine's picks."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        nodes = {"head": cluster.head_node, **{f"worker{i}": node for i, node in enumerate(workers)}}
        raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in nodes.items()}
        out = tmp_path / "res"
        code = ("import sys; from keypatch.cli.main import main; sys.exit(main(['propose', sys.argv[1], '--ratio', "
                "'0.05', '--model', 'random:small', '--engine', 'ray', '--workers', '2', '--address', sys.argv[3], "
                "'--quiet', '--out', sys.argv[2], '--precision', 'float32']))")
        child = subprocess.Popen([sys.executable, "-c", code, str(photos), str(out), cluster.address], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        _wait_for_records(out, 2, child)
        placed = {pid: _node_of(pid, raylets) for pid in _actor_pids()}
        assert len(placed) == 2 and len(set(placed.values())) == 2 and None not in placed.values(), placed
        gone = next(name for name in placed.values() if name != "head")  # a worker node holding an actor
        cluster.remove_node(nodes[gone], allow_graceful=False)
        assert len(_records(out)) < 12  # the node went mid-run
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err.decode()[-3000:]
        got = _records(out)  # asserts that no image is stored twice
        assert len(got) == 12
    finally:
        cluster.shutdown()
    run_propose([photos], 0.05, model="random:small", out_dir=tmp_path / "local", progress=False,
                precision="float32")
    want = _records(tmp_path / "local")
    assert got.keys() == want.keys() and all(got[k][0] == v[0] for k, v in want.items())
