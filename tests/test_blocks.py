"""Block-wise prediction (core.blocks): seamless labels, whole-image agreement, sources, sinks, cancel."""

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_attention_unet.core.images import normalize
from napari_attention_unet.core.predict import predict, run_to_end
from napari_attention_unet.core.weights import save_model
from napari_attention_unet.large_data import blocks as B

DATA = Path(__file__).parent / "data" / "images"
FLUO_A = DATA / "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.tif"
FLUO_B = DATA / "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1.tif"
HE = DATA / "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e.tif"
BLOCK, HALO = 192, 64  # block edges at 192 and 384 cut through the 256 px images of the mosaic


@pytest.fixture(scope="module")
def mosaic():
    """512 x 512 uint8 mosaic of the two fluorescence test images (flipped / rotated copies)."""
    a, b = tifffile.imread(FLUO_A), tifffile.imread(FLUO_B)
    return np.block([[a, np.fliplr(b)], [np.rot90(b), np.flipud(a)]])


@pytest.fixture(scope="module")
def nuclei_model():
    """The bundled nuclei model: real objects, so that block edges really cut nuclei."""
    from napari_attention_unet.models.registry import open_model

    return open_model()[0]


@pytest.fixture(scope="module")
def whole(nuclei_model, mosaic):
    return run_to_end(predict(nuclei_model, mosaic, device="cpu"))


@pytest.fixture(scope="module")
def blocked(nuclei_model, mosaic):
    return run_to_end(B.predict_blocks(nuclei_model, mosaic, block_size=BLOCK, halo=HALO, device="cpu"))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    overlap = np.zeros((int(a.max()) + 1, int(b.max()) + 1), np.int64)
    np.add.at(overlap, (a.ravel(), b.ravel()), 1)
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    return (overlap / np.maximum(union, 1))[1:, 1:]


def crosses_an_edge(mask: np.ndarray, size: int) -> bool:
    ys, xs = np.nonzero(mask)
    return len(set(ys // size)) > 1 or len(set(xs // size)) > 1


def test_plan_tiles_the_image_and_bands_lie_in_both_blocks():
    plan = B.plan_blocks((500, 700), block_size=192, halo=64)
    assert plan.grid == (3, 4) and len(plan.blocks) == 12 and len(plan.faces()) == 2 * 4 + 3 * 3
    covered = np.zeros(plan.shape, np.int32)
    for block in plan.blocks:
        covered[block.core_slices] += 1
        for (c0, c1), (o0, o1), n in zip(block.core, block.outer, plan.shape):
            assert o0 == max(c0 - 64, 0) and o1 == min(c1 + 64, n)
    assert (covered == 1).all()
    for a, b in plan.faces():
        band = plan.band(a, b)
        for index in (a, b):
            outer = plan.block(index).outer
            assert all(o0 <= s0 and s1 <= o1 for (s0, s1), (o0, o1) in zip(band, outer))
    assert 192 % plan.chunk_size() == 0
    assert B.plan_blocks((40, 50, 3)).axes == "YXC" and B.plan_blocks((3, 40, 50), "cyx").shape == (40, 50)
    with pytest.raises(ValueError, match="2D"):
        B.plan_blocks((5, 40, 50), "ZYX")


def test_enlarged_blocks_are_smaller_and_probe_windows_spread_over_the_image():
    # An enlarged block with its (shrunk) halo stays within 1.5 times a block's width as it is.
    plan = B.plan_blocks((5000, 6000), block_size=2048, halo=64)
    assert B.zoomed_plan(plan, None) is plan and B.zoomed_plan(plan, 1.0) is plan
    for zoom, size, halo in ((1.5, 2048, 43), (1.9, 1024, 34), (2.5, 1024, 32), (3.0, 1024, 32)):
        zoomed = B.zoomed_plan(plan, zoom)
        assert (zoomed.block_size, zoomed.halo, zoomed.link_width) == (size, halo, halo // 2), zoom
        assert (size + 2 * halo) * zoom <= 1.5 * (2048 + 128) and zoomed.grid == (-(-5000 // size), -(-6000 // size))
        assert 2048 % zoomed.chunk_size() == 0 and zoomed.chunk_size() <= size
    assert B.zoomed_plan(B.plan_blocks((900, 900), block_size=300, halo=16), 3.0).block_size == 300
    windows = B.plan_blocks((2000, 3000)).probe_windows()
    assert len(windows) == 5 and all(w.core == w.outer and w.core_shape == (512, 512) for w in windows)
    assert windows[0].core == ((744, 1256), (1244, 1756))  # the centre first
    assert [w.core for w in B.plan_blocks((300, 400)).probe_windows()] == [((0, 300), (0, 400))]
    # Progress counts the enlarged blocks' tiles.
    plan = B.plan_blocks((1000, 1000), block_size=512)
    assert sum(plan.tiles_per_block(None, None, 16, 2.0)) > sum(plan.tiles_per_block(None, None, 16))


def test_global_normalisation_matches_whole_image_normalisation(mosaic):
    plan = B.plan_blocks(mosaic.shape, block_size=BLOCK)
    norm = B.global_normalization(mosaic, plan, in_channels=3)
    assert np.array_equal(norm.apply(mosaic[np.newaxis]), normalize(mosaic[np.newaxis]))
    # Large images: a strided subsample, bounded in size, close to the exact percentiles.
    big = np.tile(mosaic, (4, 4))
    sampled = B.global_normalization(big, B.plan_blocks(big.shape), 3, max_samples=100_000)
    exact = np.percentile(big, [1, 99.8])
    assert abs(sampled.low[0] - exact[0]) <= 2 and abs(sampled.high[0] - exact[1]) <= 4


def test_objects_cut_by_block_edges_get_one_id(blocked, whole):
    labels = np.asarray(blocked.labels)
    ids = np.unique(labels)
    assert np.array_equal(ids, np.arange(blocked.n_objects + 1))  # consecutive global ids
    cut = [k for k in range(1, int(whole.labels.max()) + 1) if crosses_an_edge(whole.labels == k, BLOCK)]
    assert len(cut) >= 10  # the test is meaningful: many nuclei straddle block edges
    for k in cut:
        inside = labels[whole.labels == k]
        inside = inside[inside > 0]
        values, counts = np.unique(inside, return_counts=True)
        # One block-wise object covers (almost) all of it, on both sides of the edge.
        assert counts.max() >= 0.9 * (whole.labels == k).sum(), (k, values, counts)
        assert crosses_an_edge(labels == values[counts.argmax()], BLOCK)


def test_blockwise_labels_match_whole_image_labels(blocked, whole):
    iou = iou_matrix(whole.labels, np.asarray(blocked.labels))
    best = iou.max(axis=1)
    assert len(best) > 100
    assert (best > 0.9).mean() >= 0.98
    assert abs(iou.shape[1] - iou.shape[0]) <= 0.03 * iou.shape[0]


def test_blockwise_maps_match_whole_image_maps(blocked, whole):
    assert blocked.probability.dtype == np.float16 and blocked.attention.dtype == np.float16
    diff = np.abs(blocked.probability.astype(np.float32) - whole.probability)
    assert diff.mean() < 1e-3 and np.percentile(diff, 99.9) < 0.02 and diff.max() < 0.2
    for name in whole.gate_maps:
        gate_diff = np.abs(blocked.gate_map(name).astype(np.float32) - whole.gate_maps[name])
        assert gate_diff.mean() < 5e-3 and gate_diff.max() < 0.2


def test_every_source_gives_the_same_result(tiny_model, mosaic, tmp_path):
    import dask.array as da
    import zarr

    from napari_attention_unet.large_data.regions import TiffRegionArray

    mosaic = np.ascontiguousarray(mosaic[:256, :384])  # 2 x 2 blocks
    kwargs = dict(block_size=BLOCK, halo=HALO, device="cpu")
    reference = run_to_end(B.predict_blocks(tiny_model, mosaic, **kwargs))
    tifffile.imwrite(tmp_path / "mosaic.tif", mosaic)
    stored = zarr.create_array(str(tmp_path / "in.zarr"), shape=mosaic.shape, dtype=mosaic.dtype, chunks=(100, 100))
    stored[:] = mosaic
    sources = {
        "memmap": tifffile.memmap(tmp_path / "mosaic.tif", mode="r"),
        "tiff regions": TiffRegionArray.open(tmp_path / "mosaic.tif"),
        "zarr": stored,
        "dask": da.from_array(mosaic, chunks=(128, 128)),
    }
    for name, source in sources.items():
        result = run_to_end(B.predict_blocks(tiny_model, source, **kwargs))
        assert np.array_equal(result.probability, reference.probability), name
        assert np.array_equal(result.attention, reference.attention), name
        assert np.array_equal(result.labels, reference.labels), name


def test_zarr_and_tiff_sinks_hold_the_in_memory_result(nuclei_model, mosaic, tmp_path):
    import zarr

    from napari_attention_unet.large_data.files import create_tiff_sinks, create_zarr_sinks

    image = mosaic[:320, :320]
    kwargs = dict(block_size=128, halo=HALO, device="cpu")
    reference = run_to_end(B.predict_blocks(nuclei_model, image, **kwargs))
    assert reference.n_objects > 20
    names = nuclei_model.config.gate_names
    plan = B.plan_blocks(image.shape, block_size=128)
    zarr_sinks = create_zarr_sinks(tmp_path / "out.zarr", "mosaic", plan.shape, names, plan.chunk_size())
    tiff_sinks = create_tiff_sinks(tmp_path, "out", plan.shape, names)
    for sinks in (zarr_sinks, tiff_sinks):
        result = run_to_end(B.predict_blocks(nuclei_model, image, sinks=sinks, **kwargs))
        assert result.n_objects == reference.n_objects
        assert np.array_equal(sinks.labels[:], reference.labels)
        assert np.abs(sinks.attention[:].astype(np.float32) - reference.attention).max() < 1e-3
    assert np.array_equal(zarr_sinks.probability[:], reference.probability)
    on_disk = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["mosaic"]
    assert on_disk["labels"].chunks == (128, 128) and on_disk["attention"].attrs["gates"] == list(names)
    assert np.array_equal(tifffile.imread(tmp_path / "out_labels.tif"), reference.labels)
    with tifffile.TiffFile(tmp_path / "out_attention.tif") as tif:
        assert tif.series[0].dtype == np.float32 and tif.shaped_metadata[0]["gates"] == ",".join(names)


def test_uint8_sinks_and_rgb_images(tiny_model):
    rgb = tifffile.imread(HE)
    plan = B.plan_blocks(rgb.shape, block_size=128)
    sinks = B.allocate_sinks(plan, 2, probability_dtype=np.uint8, attention_dtype=np.uint8)
    result = run_to_end(B.predict_blocks(tiny_model, rgb, sinks=sinks, block_size=128, device="cpu"))
    floats = run_to_end(B.predict_blocks(tiny_model, rgb, block_size=128, device="cpu"))
    assert result.labels.shape == rgb.shape[:2] and result.attention.dtype == np.uint8
    assert np.abs(result.attention / 255.0 - floats.attention.astype(np.float32)).max() <= 0.5 / 255 + 1e-3
    semantic = run_to_end(B.predict_blocks(tiny_model, rgb, block_size=128, instances=False, gates=[]))
    assert set(np.unique(semantic.labels)) <= {0, 1} and semantic.attention.shape == (0, *rgb.shape[:2])


def test_cancel_stops_within_one_tile(tiny_model, mosaic):
    calls = []
    net = tiny_model.fused_for_inference()
    net.register_forward_hook(lambda *_: calls.append(1))
    gen = B.predict_blocks(tiny_model, mosaic, block_size=BLOCK, tile_size=64, overlap=16, inference_model=net)
    assert next(gen).stage == "normalising" and not calls
    first = next(gen)
    assert first.done == 1 and first.total > 20
    gen.close()
    assert len(calls) == 1
    with pytest.raises(StopIteration):
        next(gen)


def test_stitching_links_across_faces_and_corners():
    plan = B.plan_blocks((40, 40), block_size=20, halo=8, link_width=4)
    # One object over the whole centre (in all four blocks), plus one object per block that stays home.
    truth = np.zeros((40, 40), np.int32)
    truth[14:26, 14:26] = 1
    for k, (y, x) in enumerate([(2, 2), (2, 30), (30, 2), (30, 30)], start=2):
        truth[y : y + 5, x : x + 5] = k
    links = []
    for block in plan.blocks:
        outer = truth[tuple(slice(a, b) for a, b in block.outer)]
        _core, block_links = B.local_labels(outer, block, plan)
        links.append(block_links)
    stitching = B.stitch(plan, reversed(links))  # any arrival order
    assert stitching.n_objects == 5
    centre = {int(stitching.lut(link.index)[1]) for link in links}  # the centre keeps local id 1 everywhere
    assert len(centre) == 1


def test_predict_block_is_picklable_and_runs_in_another_process(tiny_model, mosaic, tmp_path):
    model_file = save_model(tiny_model, tmp_path / "tiny.safetensors")
    plan = B.plan_blocks(mosaic.shape, block_size=BLOCK, halo=HALO)
    norm = B.global_normalization(mosaic, plan, tiny_model.config.in_channels)
    block = plan.block((1, 1))
    options = B.PredictOptions()
    here = B.predict_block(mosaic, block, plan, model_file, norm, options)
    pickle.dumps(here.links)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(B.predict_block, mosaic, block, plan, model_file, norm, options).result()
    assert np.array_equal(here.labels, there.labels) and np.allclose(here.probability, there.probability, atol=1e-6)
    assert here.links.n_core == there.links.n_core and here.links.bands.keys() == there.links.bands.keys()
