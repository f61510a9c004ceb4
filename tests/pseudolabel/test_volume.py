"""Whole-volume pseudo-labels through the blockwise engine: equal to slice-by-slice labelling plus
in-memory linking, across z blocks and y/x tiles; reuse by signature; failures are loud."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from partitions import same_partition
from conftest import em_like

from alseg.errors import WorkFailedError
from alseg.io.omezarr import create_image, open_volume
from alseg.pseudolabel import link_stack, make_labeller, match_planes, pseudolabel_volume
from alseg.spec import CellSAMPseudoLabel, ClassicalPseudoLabel

SPEC = ClassicalPseudoLabel(threshold="otsu", denoise_sigma_nm=0.0, opening_radius_nm=0.0, min_area_nm2=640.0,
                            min_solidity=0.0, watershed_min_distance_nm=1600.0, min_size_vox=30, link_iou=0.3)
DISKS = ((14, 14, 6), (40, 30, 9), (24, 72, 8), (50, 96, 10), (74, 40, 7), (70, 100, 6), (100, 20, 8), (96, 72, 11))


def image(tmp_path, noise=0.0, chunks=(4, 32, 32)):
    data = em_like(shape=(10, 112, 128), disks=DISKS, noise=noise, membranes=False)
    vol = create_image(tmp_path / "img.zarr", shape=data.shape, dtype="uint8", chunks=chunks, voxel_size_nm=(30, 8, 8), levels=2)
    vol.write(vol.bounds, data)
    return vol.url, data


# a y/x halo wider than the largest organelle (22 px) gives every tile the whole of each object it touches
@pytest.mark.parametrize("block,halo", [((4, 112, 128), 0), ((4, 32, 32), 24), ((8, 64, 32), 32)])
def test_equals_slice_by_slice_labelling_and_linking(tmp_path, block, halo):
    url, data = image(tmp_path)
    ref = link_stack(make_labeller(SPEC, pixel_size_nm=8.0)(data), SPEC.link_iou, SPEC.min_size_vox)
    res = pseudolabel_volume(url, tmp_path / "pl.zarr", SPEC, work_dir=tmp_path / "work", block_shape=block, halo_yx=halo)
    got = open_volume(tmp_path / "pl.zarr").read()
    assert res["objects"] == ref.max() == len(DISKS)
    assert same_partition(got, ref)
    assert open_volume(tmp_path / "pl.zarr", level=1).read().any(), "the pyramid is filled"


@pytest.mark.parametrize("block,halo", [((4, 112, 128), 0), ((1, 112, 128), 0), ((2, 112, 128), 0), ((3, 32, 32), 24)])
def test_gap_closing_equals_in_memory_linking(tmp_path, block, halo):
    """With ``link_gap: 1`` the blockwise passes (gap pairs inside blocks and across z faces, blocks of
    1-4 sections) equal link_stack(gap=1) on slice-by-slice labels; objects missed in one section are
    bridged."""
    data = em_like(shape=(10, 112, 128), disks=DISKS, noise=0.0, membranes=False)
    for z, (cy, cx, r) in zip((3, 4, 6), DISKS[:3]):  # three objects vanish for one section
        y, x = np.ogrid[:112, :128]
        data[z][(y - cy) ** 2 + (x - cx) ** 2 <= (r + 12) ** 2] = 190
    vol = create_image(tmp_path / "img.zarr", shape=data.shape, dtype="uint8", chunks=(1, 16, 16), voxel_size_nm=(30, 8, 8), levels=2)
    vol.write(vol.bounds, data)
    spec = SPEC.model_copy(update={"link_gap": 1})
    labels = make_labeller(spec, pixel_size_nm=8.0)(data)
    ref = link_stack(labels, spec.link_iou, spec.min_size_vox, gap=1)
    assert ref.max() == len(DISKS) < link_stack(labels, spec.link_iou, spec.min_size_vox).max(), "the data has gaps to close"
    res = pseudolabel_volume(vol.url, tmp_path / "pl.zarr", spec, work_dir=tmp_path / "work", block_shape=block, halo_yx=halo)
    assert res["objects"] == ref.max()
    assert same_partition(open_volume(tmp_path / "pl.zarr").read(), ref)


@pytest.mark.parametrize("block", [(3, 32, 32), (1, 32, 32)])
def test_gap_closing_decides_on_whole_objects_across_tiles(tmp_path, block):
    """An object cut by a tile border continues in the next section on one side only: it has a link
    forward, so the object that starts two sections on beside its other half is not bridged to it
    (deciding per tile piece would merge the two)."""
    y, x = np.ogrid[:64, :64]
    obj = (y - 16) ** 2 + (x - 32) ** 2 <= 64                    # crosses the tile border x = 32
    data = np.full((3, 64, 64), 190, np.uint8)
    data[0][obj] = 60
    data[1][obj & (x < 31)] = 60                                 # continues left of the border only
    data[2][(y - 16) ** 2 + (x - 38) ** 2 <= 36] = 60            # a new object, right of the border
    vol = create_image(tmp_path / "img.zarr", shape=data.shape, dtype="uint8", chunks=(1, 32, 32), voxel_size_nm=(30, 8, 8), levels=1)
    vol.write(vol.bounds, data)
    spec = SPEC.model_copy(update={"link_gap": 1})
    labels = make_labeller(spec, pixel_size_nm=8.0)(data)
    right_half = np.where(x >= 32, labels[0], 0)
    assert match_planes(right_half, labels[2], spec.link_iou), "per tile piece, the halves would be bridged"
    ref = link_stack(labels, spec.link_iou, spec.min_size_vox, gap=1)
    assert ref.max() == 2
    res = pseudolabel_volume(vol.url, tmp_path / "pl.zarr", spec, work_dir=tmp_path / "work", block_shape=block, halo_yx=24)
    assert res["objects"] == 2 and same_partition(open_volume(tmp_path / "pl.zarr").read(), ref)


def test_output_is_reused_by_signature_and_redone_when_it_changes(tmp_path):
    url, _ = image(tmp_path)
    out = tmp_path / "pl.zarr"
    first = pseudolabel_volume(url, out, SPEC, work_dir=tmp_path / "work", block_shape=(4, 32, 32), halo_yx=16)
    chunk = next(p for p in sorted((out / "s0").rglob("*")) if p.is_file())
    stamp = chunk.stat().st_mtime_ns
    again = pseudolabel_volume(url, out, SPEC, work_dir=tmp_path / "work", block_shape=(4, 32, 32), halo_yx=16)
    assert again["reused"] and not first["reused"] and again["objects"] == first["objects"]
    assert chunk.stat().st_mtime_ns == stamp, "nothing rewritten"
    changed = SPEC.model_copy(update={"min_size_vox": 10**6})
    third = pseudolabel_volume(url, out, changed, work_dir=tmp_path / "work", block_shape=(4, 32, 32), halo_yx=16)
    assert not third["reused"] and third["objects"] == 0
    prov = open_volume(out).provenance()
    assert prov["complete"] and prov["signature"]["params"]["min_size_vox"] == 10**6


def test_a_failing_model_fails_the_job_and_writes_no_complete_labels(tmp_path, monkeypatch):
    double = str(Path(__file__).resolve().parents[1] / "helpers" / "cellsam_double")
    monkeypatch.syspath_prepend(double)  # the CellSAM TEST DOUBLE: the real package cannot be installed here
    sys.modules.pop("cellSAM", None)
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "token")
    monkeypatch.setenv("CELLSAM_DOUBLE_FAIL", "1")
    url, _ = image(tmp_path)
    with pytest.raises(WorkFailedError, match="CellSAM failed on slice"):
        pseudolabel_volume(url, tmp_path / "pl.zarr", CellSAMPseudoLabel(), work_dir=tmp_path / "work", block_shape=(4, 32, 32), halo_yx=0)
    assert not open_volume(tmp_path / "pl.zarr").provenance().get("complete")
    sys.modules.pop("cellSAM", None)


@pytest.mark.ray
def test_on_ray_actors_equals_serial(tmp_path, ray_cluster):
    url, _ = image(tmp_path, noise=4.0)
    spec = SPEC.model_copy(update={"denoise_sigma_nm": 8.0})
    pseudolabel_volume(url, tmp_path / "a.zarr", spec, work_dir=tmp_path / "wa", block_shape=(4, 32, 32), halo_yx=16)
    res = pseudolabel_volume(url, tmp_path / "b.zarr", spec, work_dir=tmp_path / "wb", block_shape=(4, 32, 32), halo_yx=16,
                             runner=ray_cluster, workers=2)
    assert res["objects"] > 0
    assert np.array_equal(open_volume(tmp_path / "a.zarr").read(), open_volume(tmp_path / "b.zarr").read())
