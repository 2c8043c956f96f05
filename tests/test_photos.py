"""A researcher's own photographs: finding them, reading them as viewers show them, the square
crop and its inverse (fundus.photos, fov.restore_geometry, imio's EXIF orientation)."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from dr_saliency.core.errors import BadImageError
from dr_saliency.fundus import fov as fov_lib
from dr_saliency.fundus import photos
from dr_saliency.fundus.imio import decode_image, read_image
from tests.test_preprocess import fundus


def _write(path, image):
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    return str(path)


# ---------------------------------------------------------------------------- find_photos


def test_find_photos_takes_image_files_of_folders_and_named_files(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    image, _ = fundus((90, 120))
    for name in ("b.JPG", "a.png", "c.tif"):
        _write(folder / name, image)
    (folder / "notes.txt").write_text("not a photograph")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "sub").mkdir()
    _write(folder / "sub" / "d.png", image)
    named = _write(tmp_path / "e.jpeg", image)
    found, ignored = photos.find_photos([str(folder), named])
    assert [i for i, _ in found] == ["a", "b", "c", "e"]
    assert found[3] == ("e", named)
    assert ignored == [str(folder / "notes.txt")]
    # A file named on the command line is taken whatever its suffix (reading it decides).
    found, _ = photos.find_photos([str(folder / "notes.txt")])
    assert found == [("notes", str(folder / "notes.txt"))]
    # The same file twice is one photograph.
    assert len(photos.find_photos([named, named])[0]) == 1


def test_find_photos_refuses_two_photographs_with_one_name(tmp_path):
    image, _ = fundus((90, 120))
    a = _write(tmp_path / "x.png", image)
    (tmp_path / "b").mkdir()
    b = _write(tmp_path / "b" / "x.jpg", image)
    with pytest.raises(ValueError, match=r"one photograph per name.*x\.png' and '.*x\.jpg' are both 'x'"):
        photos.find_photos([a, b])
    with pytest.raises(ValueError, match=r"that exist\. Received: path='.*nothing'"):
        photos.find_photos([str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match=r"Expected a list.*Received: inputs="):
        photos.find_photos(a)


# ---------------------------------------------------------------------------- read_photo


def test_read_photo_applies_exif_orientation(tmp_path):
    image = np.zeros((100, 160, 3), np.uint8)
    image[:10, :, 0] = 255  # a red band along the top as stored
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(image).save(path, exif=exif.tobytes(), quality=95)
    assert read_image(path).shape == (100, 160, 3)  # datasets: the stored grid
    shown = read_image(path, orient=True)
    assert shown.shape == (160, 100, 3)
    # The stored top row is the displayed right column.
    assert shown[:, -5:, 0].mean() > 200 and shown[:, :5, 0].mean() < 50


def test_read_photo_reads_rgba_16_bit_and_grey(tmp_path):
    image, _ = fundus((90, 120))
    rgba = np.dstack([image[..., ::-1], np.full(image.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(photos.read_photo(str(tmp_path / "rgba.png")), image)
    cv2.imwrite(str(tmp_path / "deep.png"), image[..., ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(photos.read_photo(str(tmp_path / "deep.png")), image)
    cv2.imwrite(str(tmp_path / "deep.tif"), image[..., 1].astype(np.uint16) * 257)
    grey = photos.read_photo(str(tmp_path / "deep.tif"))
    assert grey.shape == (90, 120, 3) and np.array_equal(grey[..., 0], image[..., 1])


def test_read_photo_names_what_is_wrong(tmp_path):
    image, _ = fundus((90, 120))
    good = _write(tmp_path / "good.jpg", image)
    data = open(good, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {
        "cut.jpg": r"could not decode the file as an image",
        "text.png": r"could not decode the file as an image",
        "empty.jpg": r"could not decode the file as an image",
    }
    _write(tmp_path / "tiny.png", image[:40, :60])
    cases["tiny.png"] = r"at least 64 px a side\. Received: 60x40 px"
    for name, value in (("black.png", 0), ("white.png", 255)):
        _write(tmp_path / name, np.full((80, 80, 3), value, np.uint8))
        cases[name] = rf"no field of view to find: the image is blank \(grey levels {value}-{value}\)"
    for name, pattern in cases.items():
        with pytest.raises(BadImageError, match=pattern) as info:
            photos.read_photo(str(tmp_path / name))
        assert info.value.image == str(tmp_path / name)


def test_a_jpeg_is_truncated_only_when_its_image_data_ends_early():
    from dr_saliency.fundus.imio import _truncated_jpeg

    image, _ = fundus((120, 160))
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
        ok, buf = cv2.imencode(".jpg", image, params)
        data = buf.tobytes()
        # An EXIF segment holding a thumbnail, with its own end marker, after the start marker.
        thumb = b"Exif\x00\x00" + b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"
        data = data[:2] + b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb + data[2:]
        assert not _truncated_jpeg(data)
        # Bytes after the end marker (a camera's trailer, padding): complete, and decoded.
        assert not _truncated_jpeg(data + b"\x00" * 3000 + b"trailer")
        np.testing.assert_array_equal(decode_image(data + b"\x00" * 3000),
                                      decode_image(data))
        # Cut anywhere before its end marker: truncated, also when the cut leaves the
        # thumbnail's end marker in the last bytes.
        for cut in (len(data) - 1, len(data) - 2, len(data) // 2, len(thumb) + 40):
            assert _truncated_jpeg(data[:cut]), (params, cut)
    assert not _truncated_jpeg(b"\x89PNG...")  # not a JPEG: the decoder judges it


# ---------------------------------------------------------------------------- Photo records


def test_photo_record_crops_like_preprocess_and_records_its_geometry(tmp_path):
    image, truth = fundus((300, 400), centre=(160, 220))
    path = _write(tmp_path / "p.png", image)
    photo = photos.Photo("p", path, 128)
    with pytest.raises(ValueError, match=r"load_image\(\) before load_fov"):
        photo.load_fov(None)
    square = photo.load_image()
    expected, _, expected_fov = fov_lib.preprocess_image(photos.read_photo(path), 128)
    np.testing.assert_array_equal(square, expected)
    np.testing.assert_array_equal(photo.load_fov(square), expected_fov)
    box = fov_lib.square_crop_box(fov_lib.fov_mask(image))
    assert photo.box == box
    assert photo.geometry == {"height": 300, "width": 400, "box": [box.top, box.left, box.side]}


def test_photo_without_a_field_of_view_is_a_bad_image(tmp_path):
    dark = np.zeros((100, 100, 3), np.uint8)
    dark[40:42, 40:42] = 200  # a speck: not blank, but no fundus
    path = _write(tmp_path / "speck.png", dark)
    with pytest.raises(BadImageError, match=r"no field of view found"):
        photos.Photo("speck", path, 128).load_image()


# ---------------------------------------------------------------------------- restore_geometry


def test_restore_geometry_inverts_the_square_crop():
    image, truth = fundus((300, 400), centre=(140, 230))
    box = fov_lib.square_crop_box(truth)
    size = 128
    square_fov = fov_lib.apply_geometry(truth, box, size, kind="fov")
    back = fov_lib.restore_geometry(square_fov, box, truth.shape)
    assert back.dtype == bool and back.shape == truth.shape
    # The FOV round trip loses only the rim's resampling (a few % of the disc).
    assert (back ^ truth).sum() < 0.05 * truth.sum()
    # One bright pixel of the square lands where SquareBox.to_source puts its centre.
    spike = np.zeros((size, size), np.float32)
    spike[40, 70] = 1
    restored = fov_lib.restore_geometry(spike, box, truth.shape)
    assert restored.dtype == np.float32
    row, col = np.unravel_index(restored.argmax(), restored.shape)
    expected = box.to_source(40, 70, size)
    assert abs(row - expected[0]) <= 1 and abs(col - expected[1]) <= 1
    # Outside the square (above a FOV cut by the border): 0.
    assert restored[: max(0, box.top)].sum() == 0


def test_restore_geometry_checks_its_arguments():
    box = fov_lib.SquareBox(0, 0, 10)
    with pytest.raises(TypeError, match=r"SquareBox.*Received: box=\(0, 0, 10\)"):
        fov_lib.restore_geometry(np.zeros((4, 4)), (0, 0, 10), (10, 10))
    with pytest.raises(ValueError, match=r"square \(size, size\).*Received: array.shape=\(4, 5\)"):
        fov_lib.restore_geometry(np.zeros((4, 5)), box, (10, 10))
    with pytest.raises(ValueError, match=r"shape \(H, W\) of positive ints.*Received: shape=\(0, 10\)"):
        fov_lib.restore_geometry(np.zeros((4, 4)), box, (0, 10))


@pytest.mark.realdata
def test_real_photograph_round_trip(realdata):
    folder = os.path.join(realdata, "idrid", "A. Segmentation", "1. Original Images", "a. Training Set")
    path = os.path.join(folder, "IDRiD_01.jpg")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found")
    photo = photos.Photo("IDRiD_01", path, 256)
    square = photo.load_image()
    assert square.shape == (256, 256, 3)
    assert photo.geometry["height"] == 2848 and photo.geometry["width"] == 4288
    back = fov_lib.restore_geometry(photo.load_fov(square), photo.box, photo.shape)
    fov = fov_lib.fov_mask(photos.read_photo(path))
    assert (back & fov).sum() / (back | fov).sum() > 0.97
