"""mcc.visualize: the VOC colour map, CAM and label overlays, grids and pipeline strips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcc.visualize import (
    cam_colormap,
    colorize_label,
    make_grid,
    overlay_cam,
    overlay_label,
    pipeline_strip,
    to_pil,
    to_rgb_image,
    voc_palette,
)

# The first colours of the VOC development kit's colour map (background, aeroplane, ... person = 15).
VOC_FIRST = [
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 128),
    (64, 0, 0),
    (192, 0, 0),
    (64, 128, 0),
    (192, 128, 0),
    (64, 0, 128),
    (192, 0, 128),
    (64, 128, 128),
    (192, 128, 128),
    (0, 64, 0),
    (128, 64, 0),
    (0, 192, 0),
    (128, 192, 0),
    (0, 64, 128),
]


def test_voc_palette_matches_the_devkit_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert [tuple(c) for c in palette[:21].tolist()] == VOC_FIRST
    assert tuple(palette[255].tolist()) == (224, 224, 192)
    assert len({tuple(c) for c in palette.tolist()}) == 256  # every index its own colour
    np.testing.assert_array_equal(voc_palette(21), palette[:21])
    with pytest.raises(ValueError, match="num_colors"):
        voc_palette(0)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_colorize_label_uses_the_palette_and_the_ignore_colour(as_tensor):
    label = np.array([[0, 1, 255], [15, 20, 2]], dtype=np.int64)
    colours = colorize_label(torch.from_numpy(label) if as_tensor else label)
    assert colours.shape == (2, 3, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 2]) == (224, 224, 192)
    assert tuple(colours[1, 0]) == VOC_FIRST[15] and tuple(colours[0, 1]) == VOC_FIRST[1]
    custom = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.uint8)
    assert colorize_label(np.array([[2, 0]]), custom).tolist() == [[[7, 8, 9], [1, 2, 3]]]


def test_colorize_label_rejects_bad_maps():
    with pytest.raises(ValueError, match="label"):
        colorize_label(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="label"):
        colorize_label(np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="outside"):
        colorize_label(np.array([[3]]), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        colorize_label(np.array([[-1]]))


def test_cam_colormap_is_jet_like_and_clipped():
    x = np.array([[0.0, 0.25, 0.5, 0.75, 1.0, -3.0, 7.0]], dtype=np.float32)
    colours = cam_colormap(x)[0].astype(int).tolist()
    assert colours[0] == [0, 0, 128]  # dark blue
    assert colours[1] == [0, 128, 255]
    assert colours[2] == [128, 255, 128]  # green-yellow at the middle
    assert colours[3] == [255, 128, 0]
    assert colours[4] == [128, 0, 0]  # dark red
    assert colours[5] == colours[0] and colours[6] == colours[4]
    # red rises and blue falls along the scale (up to the dark ends)
    ramp = cam_colormap(np.linspace(0.125, 0.875, 50, dtype=np.float32)[None])[0].astype(int)
    assert (np.diff(ramp[:, 0]) >= 0).all() and (np.diff(ramp[:, 2]) <= 0).all()
    stack = np.stack([x, 1.0 - x.clip(0, 1)])
    np.testing.assert_array_equal(cam_colormap(stack), cam_colormap(np.maximum(x, 1.0 - x.clip(0, 1))))
    with pytest.raises(ValueError, match="cam"):
        cam_colormap(np.zeros((2, 2), np.int64))


def test_to_rgb_image_accepts_channels_first_floats_and_uint8():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    np.testing.assert_array_equal(to_rgb_image(as_float), rgb)
    np.testing.assert_array_equal(to_rgb_image(rgb), rgb)
    assert to_rgb_image(torch.full((3, 2, 2), 2.0)).max() == 255  # clipped
    with pytest.raises(ValueError, match="image"):
        to_rgb_image(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="image"):
        to_rgb_image(np.zeros((4, 4, 3), np.int64))


def test_overlays_blend_with_alpha():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    cam = rng.random((6, 8)).astype(np.float32)
    label = rng.integers(0, 21, (6, 8))
    np.testing.assert_array_equal(overlay_cam(image, cam, alpha=0.0), image)
    np.testing.assert_array_equal(overlay_cam(image, cam, alpha=1.0), cam_colormap(cam))
    np.testing.assert_array_equal(overlay_label(image, label, alpha=1.0), colorize_label(label))
    half = overlay_label(image, label, alpha=0.5).astype(int)
    expected = (image.astype(int) + colorize_label(label).astype(int)) / 2
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        overlay_cam(image, cam, alpha=1.5)
    with pytest.raises(ValueError, match="cam"):
        overlay_cam(image, cam[:3])
    with pytest.raises(ValueError, match="label"):
        overlay_label(image, label[:, :4])


def test_make_grid_places_panels_in_cells():
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((2, 2, 3), 20, np.uint8)
    grid = make_grid([[a, b], [b]], padding=1, pad_value=0)
    assert grid.shape == (2 * 4 + 3, 2 * 6 + 3, 3)
    np.testing.assert_array_equal(grid[1:5, 1:7], a)
    # b centred in the 4x6 cell right of a and in the first cell of row 2
    np.testing.assert_array_equal(grid[2:4, 8 + 2 : 8 + 4], b)
    np.testing.assert_array_equal(grid[6 + 1 : 6 + 3, 1 + 2 : 1 + 4], b)
    assert grid[0].max() == 0 and (grid == 10).sum() == a.size and (grid == 20).sum() == 2 * b.size
    with pytest.raises(ValueError, match="rows"):
        make_grid([])
    with pytest.raises(ValueError, match="rows"):
        make_grid([[np.zeros((2, 2), np.uint8)]])
    with pytest.raises(ValueError, match="padding"):
        make_grid([[a]], padding=-1)


def test_pipeline_strip_panels_equal_the_single_helpers():
    torch.manual_seed(0)
    image = torch.rand(3, 10, 12)
    cam = torch.rand(3, 10, 12)
    refined = torch.randint(0, 4, (10, 12))
    prediction = torch.randint(0, 4, (10, 12))
    truth = torch.randint(0, 4, (10, 12))
    truth[0] = 255
    strip = pipeline_strip(
        image, cam=cam, cam_par=refined, prediction=prediction, ground_truth=truth, alpha=0.4, padding=2
    )
    assert strip.shape == (10, 5 * 12 + 4 * 2, 3) and strip.dtype == np.uint8
    panels = [strip[:, i * 14 : i * 14 + 12] for i in range(5)]
    np.testing.assert_array_equal(panels[0], to_rgb_image(image))
    np.testing.assert_array_equal(panels[1], overlay_cam(image, cam, alpha=0.4))
    np.testing.assert_array_equal(panels[2], colorize_label(refined))
    np.testing.assert_array_equal(panels[3], colorize_label(prediction))
    np.testing.assert_array_equal(panels[4], colorize_label(truth))
    assert (strip[:, 12:14] == 255).all()
    # missing panels are left out; a float refined CAM is drawn as a heat map
    short = pipeline_strip(image, cam_par=cam[0], padding=0)
    np.testing.assert_array_equal(short[:, 12:], overlay_cam(image, cam[0]))
    with pytest.raises(ValueError, match="prediction"):
        pipeline_strip(image, prediction=prediction[:5])


def test_to_pil_round_trips():
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    picture = to_pil(rgb)
    assert picture.size == (7, 5) and picture.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(picture), rgb)


def test_make_grid_titles_sit_above_their_columns():
    panel = np.zeros((20, 40, 3), np.uint8)
    plain = make_grid([[panel, panel, panel]], padding=2)
    titled = make_grid([[panel, panel, panel]], padding=2, titles=["image", "", "truth"], title_size=10)
    header_height = titled.shape[0] - plain.shape[0]
    assert header_height > 0 and titled.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(titled[header_height:], plain)
    header = titled[:header_height]
    ink = (header < 128).any(axis=(0, 2))  # columns of the header with dark text
    assert ink[2:42].any() and not ink[44:84].any() and ink[86:126].any()
    with pytest.raises(ValueError, match="titles"):
        make_grid([[panel]], titles=["a", "b"])
