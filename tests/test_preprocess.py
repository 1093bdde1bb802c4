"""Preprocessing: exact tensor values, and heatmaps mapped back to the right original pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from onnx_explain.contract import Preprocess
from onnx_explain.images import LoadedImage
from onnx_explain.preprocess import Geometry, preprocess, preprocess_batch, resize_image

RNG = np.random.default_rng(7)


def image_4x6() -> np.ndarray:
    """A hand-built 4 x 6 RGB image whose pixel values are multiples of 51 (= 0.2 * 255)."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = [[0, 51, 102, 153, 204, 255]] * 4
    rgb[..., 1] = [[255], [204], [153], [102]]
    rgb[..., 2] = 51
    rgb[0, 0] = (51, 102, 255)
    return rgb


# --------------------------------------------------------------------------- tensor values


def test_exact_normalisation_nchw():
    pre = Preprocess(size=(4, 6), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    x, geo = preprocess(LoadedImage.from_array(image_4x6()), pre)
    assert x.dtype == np.float32 and x.shape == (3, 4, 6)
    # Pixel (0, 0) = (51, 102, 255) -> ((0.2 - .5) / .25, (0.4 - .5) / .5, (1 - .5) / 1)
    np.testing.assert_allclose(x[:, 0, 0], [-1.2, -0.2, 0.5], atol=1e-6)
    # Red channel of row 1: 0, .2, .4, .6, .8, 1 -> (v - .5) / .25
    np.testing.assert_allclose(x[0, 1], [-2.0, -1.2, -0.4, 0.4, 1.2, 2.0], atol=1e-6)
    # Green channel, column 3: rows 1..3 = 0.8, 0.6, 0.4 -> (v - .5) / .5
    np.testing.assert_allclose(x[1, 1:, 3], [0.6, 0.2, -0.2], atol=1e-6)
    # Blue channel is 0.2 everywhere but (0, 0): (0.2 - .5) / 1
    np.testing.assert_allclose(x[2, 1:], -0.3, atol=1e-6)
    assert geo == Geometry((4, 6), (4, 6), (4, 6), (0, 0), "stretch")


def test_layout_and_colour_order():
    rgb = image_4x6()
    base = Preprocess(size=(4, 6), scale=1.0, mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 4.0))
    nchw, _ = preprocess(rgb, base)
    nhwc, _ = preprocess(rgb, Preprocess(**{**base.__dict__, "layout": "NHWC"}))
    np.testing.assert_array_equal(nhwc, nchw.transpose(1, 2, 0))
    bgr, _ = preprocess(rgb, Preprocess(**{**base.__dict__, "color": "BGR"}))
    # mean/std apply in tensor order: channel 0 of a BGR tensor is blue, minus mean[0].
    np.testing.assert_allclose(bgr[0], (rgb[..., 2].astype(np.float32) - 10.0) / 1.0)
    np.testing.assert_allclose(bgr[2], (rgb[..., 0].astype(np.float32) - 30.0) / 4.0)
    np.testing.assert_allclose(nchw[0], (rgb[..., 0].astype(np.float32) - 10.0) / 1.0)
    gray, _ = preprocess(rgb, Preprocess(size=(4, 6), color="GRAY", scale=1.0, mean=(0.0,), std=(1.0,)))
    assert gray.shape == (1, 4, 6)
    np.testing.assert_allclose(gray[0, 0, 0], 0.299 * 51 + 0.587 * 102 + 0.114 * 255, rtol=1e-6)


def test_default_imagenet_recipe_values():
    rgb = np.full((8, 8, 3), 255, np.uint8)
    x, _ = preprocess(rgb, Preprocess(size=(8, 8)))
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-6)


def test_stretch_downscale_is_exact_block_mean():
    """INTER_AREA halving averages 2x2 blocks exactly (values chosen with integer means)."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = [[0, 40, 100, 100, 8, 0], [20, 40, 100, 100, 0, 0], [1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3]]
    x, geo = preprocess(rgb, Preprocess(size=(2, 3), scale=1.0, mean=(0, 0, 0), std=(1, 1, 1)))
    np.testing.assert_array_equal(x[0], [[25, 100, 2], [1, 2, 3]])
    assert geo.scale == (0.5, 0.5)


def test_resize_interpolation_rules():
    img = RNG.integers(0, 256, (30, 40, 3), np.uint8)
    np.testing.assert_array_equal(resize_image(img, (15, 20)), cv2.resize(img, (20, 15), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize_image(img, (60, 80)), cv2.resize(img, (80, 60), interpolation=cv2.INTER_LINEAR))
    # Mixed: width shrinks by area, height grows linearly, one axis at a time.
    step = cv2.resize(img, (20, 30), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_image(img, (60, 20)), cv2.resize(step, (20, 60), interpolation=cv2.INTER_LINEAR))
    assert resize_image(img, (30, 40)) is img


# --------------------------------------------------------------------------- center crop


def test_center_crop_geometry_and_pixels():
    rgb = RNG.integers(0, 256, (100, 200, 3), np.uint8)
    pre = Preprocess(size=(50, 50), resize="center_crop", resize_shorter=50, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    x, geo = preprocess(rgb, pre)
    assert geo == Geometry((100, 200), (50, 50), (50, 100), (0, -25), "center_crop")
    assert geo.scale == (0.5, 0.5)
    resized = cv2.resize(rgb, (100, 50), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(x.transpose(1, 2, 0), resized[:, 25:75].astype(np.float32))


def test_center_crop_one_hot_lands_on_known_pixels():
    geo = Geometry((100, 200), (50, 50), (50, 100), (0, -25), "center_crop")
    one_hot = np.zeros((50, 50), np.float32)
    one_hot[10, 20] = 1.0

    nearest = geo.to_original(one_hot, interpolation="nearest")
    assert nearest.shape == (100, 200) and nearest.dtype == np.float32
    assert sorted(map(tuple, np.argwhere(nearest == 1.0))) == [(20, 90), (20, 91), (21, 90), (21, 91)]
    assert nearest.sum() == 4.0

    # Bilinear, half-pixel centres: original pixel j sits at input (j + .5) / 2 - 25.
    linear = geo.to_original(one_hot)
    w = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    expected = np.zeros((100, 200), np.float32)
    expected[19:23, 89:93] = np.outer(w, w)
    np.testing.assert_allclose(linear, expected, atol=1e-7)

    # Columns cropped away by the centre crop get 0; the rest keeps the map's value.
    ones = geo.to_original(np.ones((50, 50), np.float32))
    assert (ones[:, 50:150] == 1.0).all()
    assert (ones[:, :50] == 0.0).all() and (ones[:, 150:] == 0.0).all()


def test_center_crop_offsets_follow_torchvision_rounding():
    pre = Preprocess(size=(10, 10), resize="center_crop", scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    # torchvision: crop_left = int(round((w - 10) / 2)); Python rounds halves to even.
    for width, left in ((13, 2), (15, 2), (17, 4), (12, 1)):
        rgb = RNG.integers(0, 256, (10, width, 3), np.uint8)
        x, geo = preprocess(rgb, pre)
        assert geo.offset == (0, -left) and geo.resized_size == (10, width)
        np.testing.assert_array_equal(x[0], rgb[:, left : left + 10, 0])


def test_center_crop_torchvision_shorter_side_truncation():
    pre = Preprocess(size=(224, 224), resize="center_crop", resize_shorter=256)
    _, geo = preprocess(np.zeros((375, 500, 3), np.uint8), pre)
    assert geo.resized_size == (256, 341)  # int(256 * 500 / 375) = 341
    assert geo.offset == (-16, -58)  # round(32 / 2), round(117 / 2) = round(58.5) = 58
    _, geo = preprocess(np.zeros((500, 375, 3), np.uint8), pre)
    assert geo.resized_size == (341, 256) and geo.offset == (-58, -16)


def test_center_crop_pads_when_smaller_than_input():
    rgb = np.full((8, 8, 3), 200, np.uint8)
    pre = Preprocess(size=(12, 12), resize="center_crop", resize_shorter=8, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1), pad_value=7)
    x, geo = preprocess(rgb, pre)
    assert geo.offset == (2, 2) and geo.content_box == (2, 2, 10, 10)
    assert (x[:, 2:10, 2:10] == 200).all()
    assert (x[:, :2] == 7).all() and (x[:, :, 10:] == 7).all()


# --------------------------------------------------------------------------- letterbox


def test_letterbox_tensor_and_geometry():
    rgb = RNG.integers(0, 256, (100, 200, 3), np.uint8)
    pre = Preprocess(size=(64, 64), resize="letterbox", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pad_value=114)
    x, geo = preprocess(rgb, pre)
    assert geo == Geometry((100, 200), (64, 64), (32, 64), (16, 0), "letterbox")
    assert geo.content_box == (0, 16, 64, 48)
    np.testing.assert_allclose(x[:, :16], (114 / 255 - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(x[:, 48:], (114 / 255 - 0.5) / 0.5, rtol=1e-6)
    resized = cv2.resize(rgb, (64, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_allclose(x[:, 16:48], (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)


def test_letterbox_padding_removed_from_maps():
    geo = Geometry((100, 200), (64, 64), (32, 64), (16, 0), "letterbox")
    m = np.full((64, 64), 7.0, np.float32)
    m[16:48] = 1.0
    back = geo.to_original(m)
    assert back.shape == (100, 200)
    np.testing.assert_array_equal(back, 1.0)  # not one pixel blends in the padding
    # A coarse 8x8 feature map (stride 8): content cells are rows 2..5.
    coarse = np.full((8, 8), 7.0, np.float32)
    coarse[2:6] = np.arange(4, dtype=np.float32)[:, None]
    back = geo.to_original(coarse)
    assert back.min() == 0.0 and back.max() == 3.0
    np.testing.assert_array_equal(back[0], 0.0)
    np.testing.assert_array_equal(back[-1], 3.0)


def test_letterbox_round_trip_of_a_box():
    geo = Geometry((100, 200), (64, 64), (32, 64), (16, 0), "letterbox")
    assert geo.box_to_original((16, 24, 32, 40)) == pytest.approx((50.0, 25.0, 100.0, 75.0), abs=1e-9)
    assert Geometry.from_json(json.loads(json.dumps(geo.to_json()))) == geo
    x, y = geo.to_input_xy(50.0, 25.0)
    assert (float(x), float(y)) == (16.0, 24.0)


# --------------------------------------------------------------------------- stretch maps


def test_to_original_identity_and_cv2_agreement():
    m = RNG.random((12, 18)).astype(np.float32)
    same = Geometry((12, 18), (12, 18), (12, 18), (0, 0))
    np.testing.assert_array_equal(same.to_original(m), m)
    # Input 12x18 from an original 36x36: equals cv2.resize of the map (INTER_LINEAR, float).
    geo = Geometry((36, 36), (12, 18), (12, 18), (0, 0))
    np.testing.assert_allclose(geo.to_original(m), cv2.resize(m, (36, 36), interpolation=cv2.INTER_LINEAR), atol=1e-5)


def test_feature_map_of_stride_32():
    """A 7x7 map covering a 224x224 input, original 448x300: same as resizing the map directly."""
    m = RNG.random((7, 7)).astype(np.float32)
    _, geo = preprocess(np.zeros((448, 300, 3), np.uint8), Preprocess(size=(224, 224)))
    back = geo.to_original(m)
    np.testing.assert_allclose(back, cv2.resize(m, (300, 448), interpolation=cv2.INTER_LINEAR), atol=1e-5)
    stack = geo.to_original(np.stack([m, 2 * m]))
    assert stack.shape == (2, 448, 300)
    np.testing.assert_allclose(stack[1], 2 * back, rtol=1e-6)


def test_batch_matches_single_images():
    imgs = [RNG.integers(0, 256, s, np.uint8) for s in ((30, 40, 3), (50, 20, 3), (16, 16, 3))]
    pre = Preprocess(size=(16, 16), resize="letterbox")
    batch, geos = preprocess_batch([LoadedImage.from_array(imgs[0]), imgs[1], imgs[2]], pre)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == np.float32
    for i, img in enumerate(imgs):
        x, g = preprocess(img, pre)
        np.testing.assert_array_equal(batch[i], x)
        assert geos[i] == g
    with pytest.raises(ValueError):
        preprocess_batch([], pre)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layout": "CHW"},
        {"color": "RGBA"},
        {"resize": "fit"},
        {"std": (1.0, 0.0, 1.0)},
        {"mean": (0.1, 0.2)},
        {"size": (0, 10)},
        {"resize": "center_crop", "resize_shorter": 0},
    ],
)
def test_bad_recipes_rejected(kwargs):
    with pytest.raises(ValueError):
        preprocess(np.zeros((8, 8, 3), np.uint8), Preprocess(**{"size": (8, 8), **kwargs}))


def test_bad_images_rejected():
    with pytest.raises(ValueError):
        preprocess(np.zeros((8, 8), np.uint8), Preprocess(size=(8, 8)))
    with pytest.raises(ValueError):
        preprocess(np.zeros((8, 8, 3), np.float32), Preprocess(size=(8, 8)))
    geo = Geometry((8, 8), (8, 8), (8, 8), (0, 0))
    with pytest.raises(ValueError):
        geo.to_original(np.zeros(8))
    with pytest.raises(ValueError):
        geo.to_original(np.zeros((8, 8)), interpolation="cubic")
