"""Batch prediction on a real dask LocalCluster (2 worker processes on loopback) against one process."""

from __future__ import annotations

import importlib
import multiprocessing
from pathlib import Path

import dask
import distributed
import numpy as np
import pytest
import tifffile
import torch

from napari_attention_unet import cli
from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.predict import PredictOptions, predict, run_to_end
from napari_attention_unet.core.weights import load_model, save_model
from napari_attention_unet.large_data.cluster import dask_client, local_cluster, usable_cores
from napari_attention_unet.large_data.distributed import model_spec, predict_batch, result_paths, worker_model
from napari_attention_unet.large_data.files import read_image
from napari_attention_unet.models.registry import ModelNotFoundError

DATA = Path(__file__).parent / "data" / "images"
SAMPLE = Path(__file__).parents[1] / "src" / "napari_attention_unet" / "sample_data" / "nuclei_fluorescence.tif"
BATCH = [*sorted(DATA.glob("*.tif")), SAMPLE]  # 3 DSB images (grey and H&E) and the fluorescence sample


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each, on 127.0.0.1, no dashboard; closed after the module."""
    with local_cluster(2, memory_limit="1.5GiB") as local:
        yield local


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny random model saved to a file (the workers are told its path, not sent the network)."""
    torch.manual_seed(0)
    model = AttentionUNet(ModelConfig(base_width=4, depth=3))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.safetensors")


def single_process(model: AttentionUNet, path: Path):
    return run_to_end(predict(model, read_image(path), device="cpu"))


def assert_same_instances(a: np.ndarray, b: np.ndarray) -> None:
    """The same objects, whatever their ids: a one-to-one map between the two label sets."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a > 0, b > 0)
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def assert_matches_single_process(results, model: AttentionUNet, out: Path) -> None:
    for result in results:
        assert result.ok, result.error
        expected = single_process(model, result.path)
        labels_path, attention_path = result_paths(out, result.path)
        assert (result.labels_path, result.attention_path) == (labels_path, attention_path)
        assert_same_instances(tifffile.imread(labels_path), expected.labels)
        attention = tifffile.imread(attention_path)
        np.testing.assert_allclose(attention, np.stack(list(expected.gate_maps.values())), atol=1e-4)


def test_batch_on_two_workers_matches_one_process(client, tiny_file, tmp_path):
    out = tmp_path / "out"
    spec = model_spec(tiny_file, "cpu")
    assert spec.source == str(tiny_file.resolve())  # a path travels, never a network
    results = predict_batch(client, BATCH, out, spec, PredictOptions(), progress=False)

    assert [r.path for r in results] == BATCH
    assert {r.worker for r in results} == {str(w["name"]) for w in client.scheduler_info()["workers"].values()}
    model, _ = load_model(tiny_file)
    assert_matches_single_process(results, model, out)
    # One model per worker process, loaded on its first task and reused by the next ones.
    cached = client.run(lambda: len(importlib.import_module("napari_attention_unet.large_data.distributed")._MODELS))
    assert sorted(cached.values()) == [1, 1]


def test_bundled_model_travels_by_name(client, tmp_path):
    spec = model_spec(None, "cpu")
    assert spec.source == "nuclei"
    out = tmp_path / "out"
    [result] = predict_batch(client, [SAMPLE], out, spec, PredictOptions(), progress=False)
    assert result.objects > 10  # real nuclei found
    model, _, _ = worker_model(spec)
    assert_matches_single_process([result], model, out)


def test_a_bad_file_fails_alone(client, tiny_file, tmp_path, capsys):
    not_an_image = tmp_path / "notes.tif"
    not_an_image.write_text("not a TIFF")
    batch = [BATCH[0], tmp_path / "missing.tif", not_an_image, BATCH[1]]
    results = predict_batch(client, batch, tmp_path / "out", model_spec(tiny_file), PredictOptions(), progress=False)

    assert [r.ok for r in results] == [True, False, False, True]
    assert "no such file" in results[1].error and "notes.tif could not be read" in results[2].error
    assert all(p.is_file() for r in results if r.ok for p in (r.labels_path, r.attention_path))
    err = capsys.readouterr().err
    assert "skipping" in err and "missing.tif" in err and "notes.tif" in err


def test_model_missing_on_the_workers_is_reported_per_file(client, tiny_file, tmp_path):
    copy = tmp_path / "gone.safetensors"
    copy.write_bytes(tiny_file.read_bytes())
    spec = model_spec(copy)
    copy.unlink()  # as if the path did not exist on the workers' machines
    results = predict_batch(client, BATCH[:2], tmp_path / "out", spec, PredictOptions(), progress=False)
    assert all(not r.ok and "no model file" in r.error and "on worker" in r.error for r in results)


def test_model_spec_resolves_on_the_client(model_home, tiny_model_path):
    assert model_spec("tiny").source == str(tiny_model_path.resolve())  # a saved model goes by path
    with pytest.raises(ModelNotFoundError):
        model_spec("no-such-model")


def test_cli_on_an_existing_scheduler(cluster, tiny_file, tmp_path, capsys):
    out = tmp_path / "dask"
    argv = ["predict", *map(str, BATCH), "--model", str(tiny_file), "--device", "cpu"]
    assert cli.main([*argv, "--out", str(out), "--scheduler", cluster.scheduler_address]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "local")]) == 0  # the single-process engine
    for path in BATCH:
        for dask_file, local_file in zip(result_paths(out, path), result_paths(tmp_path / "local", path)):
            dask_array, local_array = tifffile.imread(dask_file), tifffile.imread(local_file)
            assert dask_array.dtype == local_array.dtype
            if "labels" in dask_file.name:
                assert_same_instances(dask_array, local_array)
            else:
                np.testing.assert_allclose(dask_array, local_array, atol=1e-4)
    assert cluster.scheduler_address in capsys.readouterr().err

    # One file missing: the others are written and the exit code says something failed.
    missing = str(tmp_path / "missing.tif")
    argv = ["predict", *map(str, BATCH), missing, "--model", str(tiny_file), "--out", str(tmp_path / "o2")]
    assert cli.main([*argv, "--scheduler", cluster.scheduler_address]) == 1
    assert "1 of 5 image(s) failed" in capsys.readouterr().err
    assert all(result_paths(tmp_path / "o2", p)[0].is_file() for p in BATCH)


@pytest.mark.parametrize("workers", [["--workers", "2"], ["--workers"]])
def test_cli_local_cluster_starts_and_stops(tiny_file, tmp_path, capsys, workers):
    out = tmp_path / "out"
    before = set(multiprocessing.active_children())
    rc = cli.main(["predict", *map(str, BATCH[:2]), "--out", str(out), "--model", str(tiny_file), *workers])
    assert rc == 0, capsys.readouterr().err
    assert all(p.is_file() for path in BATCH[:2] for p in result_paths(out, path))
    n = workers[1] if len(workers) > 1 else str(usable_cores())  # --workers alone: one per core
    assert f"local cluster of {n} worker" in capsys.readouterr().err
    assert set(multiprocessing.active_children()) == before  # its worker processes are gone


def test_cli_unreachable_scheduler_is_a_clear_error(tiny_file, tmp_path, capsys):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc = cli.main(
            [
                "predict",
                str(BATCH[0]),
                "--out",
                str(tmp_path),
                "--model",
                str(tiny_file),
                "--scheduler",
                "tcp://127.0.0.1:9",
            ]
        )
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not reach the dask scheduler tcp://127.0.0.1:9" in err and "Traceback" not in err


def test_dask_client_refuses_zero_workers():
    with pytest.raises(ValueError, match="at least 1"), dask_client(workers=0):
        pass


# --------------------------------------------------------------------------- one large image in blocks


@pytest.fixture(scope="module")
def mosaic():
    """512 x 512 of real nuclei: the two grey DSB test images and the sample, one of them mirrored."""
    grey = [read_image(p) for p in (BATCH[0], BATCH[1], SAMPLE)]
    return np.block([[grey[0], grey[1]], [grey[2], grey[0][:, ::-1]]])


@pytest.fixture(scope="module")
def mosaic_in_one_process(mosaic):
    """The block engine's sequential driver on the mosaic, bundled model, 192 px blocks (3 x 3)."""
    from napari_attention_unet.large_data.blocks import predict_blocks

    model, _, _ = worker_model(model_spec(None, "cpu"))
    return run_to_end(predict_blocks(model, mosaic, block_size=192, device="cpu"))


def test_large_tiff_in_blocks_matches_one_process(client, mosaic, mosaic_in_one_process, tmp_path):
    from napari_attention_unet.large_data.distributed_blocks import predict_large

    spec = model_spec(None, "cpu")  # the bundled model: real objects to stitch across block faces
    model, _, _ = worker_model(spec)
    image_path, out = tmp_path / "mosaic.tif", tmp_path / "out"
    tifffile.imwrite(image_path, mosaic)

    # 192 px blocks: 3 x 3 blocks whose faces cut through nuclei, spread over the two workers
    result = predict_large(client, image_path, out, spec, model.config, block_size=192, progress=False)

    assert result.blocks == 9 and result.n_objects == mosaic_in_one_process.n_objects > 20
    labels, attention = [tifffile.imread(p) for p in result_paths(out, image_path)]
    assert_same_instances(labels, mosaic_in_one_process.labels)
    np.testing.assert_allclose(attention, mosaic_in_one_process.attention, atol=2e-3)


def test_large_image_of_small_nuclei_is_enlarged_alike_on_the_workers(client, mosaic, tmp_path):
    """The mosaic at half size (nuclei under 12 px): a worker decides the second look once, and the
    blocks (smaller for it when large) are enlarged as the sequential driver enlarges them."""
    from scipy import ndimage

    from napari_attention_unet.large_data.blocks import predict_blocks
    from napari_attention_unet.large_data.distributed_blocks import predict_large

    spec = model_spec(None, "cpu")
    model, _, _ = worker_model(spec)
    small = ndimage.zoom(mosaic, 0.5, order=1)
    one_process = run_to_end(predict_blocks(model, small, block_size=128, device="cpu"))
    assert one_process.zoom is not None and one_process.zoom > 1.2
    image_path, out = tmp_path / "small.tif", tmp_path / "out"
    tifffile.imwrite(image_path, small)
    result = predict_large(client, image_path, out, spec, model.config, block_size=128, progress=False)
    assert result.blocks == 4 and result.n_objects == one_process.n_objects > 20
    labels, attention = [tifffile.imread(p) for p in result_paths(out, image_path)]
    assert_same_instances(labels, one_process.labels)
    np.testing.assert_allclose(attention, one_process.attention, atol=2e-3)


def test_cli_zarr_in_zarr_out_on_a_scheduler(cluster, mosaic, mosaic_in_one_process, tmp_path, capsys):
    zarr = pytest.importorskip("zarr")

    source, out = tmp_path / "slide.zarr", tmp_path / "out.zarr"
    zarr.create_array(str(source), data=mosaic, chunks=(128, 128))
    argv = ["predict", str(source), "--out", str(out), "--block-size", "192", "--device", "cpu"]
    assert cli.main([*argv, "--scheduler", cluster.scheduler_address]) == 0, capsys.readouterr().err

    stored = zarr.open_group(str(out), mode="r")["slide"]
    assert_same_instances(stored["labels"][...], mosaic_in_one_process.labels)
    np.testing.assert_allclose(stored["attention"][...].astype(np.float32), mosaic_in_one_process.attention, atol=2e-3)


def test_workers_take_volumes_at_the_models_training_spacing(cluster, tmp_path, capsys):
    """A 3D model trained at spacing 3,1,1 is given TIFF volumes (no voxel size of their own) at that
    spacing on dask workers too, as in one process; ``--spacing 1,1,1`` gives other maps."""
    torch.manual_seed(0)
    model = AttentionUNet(
        ModelConfig(spatial_dims=3, in_channels=1, classes=("background", "a"), base_width=4, depth=3)
    )
    model_path = save_model(model, tmp_path / "vol3d.safetensors", info={"spacing": [3.0, 1.0, 1.0]})
    volume = tmp_path / "volume.tif"
    tifffile.imwrite(volume, np.random.default_rng(0).random((6, 32, 40), dtype=np.float32))
    argv = ["predict", str(volume), "--model", str(model_path), "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert "training spacing 3,1,1" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "cubic"), "--spacing", "1,1,1"]) == 0
    dask_maps, local_maps, cubic_maps = (
        tifffile.imread(result_paths(tmp_path / out, volume)[1]) for out in ("dask", "local", "cubic")
    )
    assert dask_maps.shape == local_maps.shape == (2, 6, 32, 40)  # gate first, then the volume's own grid
    np.testing.assert_allclose(dask_maps, local_maps, atol=1e-4)
    assert np.abs(cubic_maps - local_maps).max() > 1e-3
