"""FFHQ alignment against the official outputs in tests/fixtures/align, paste-back, and bad input."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import FACES, GOLDEN_ALIGN
from PIL import Image

from recon.config import Align
from recon.data.align import AlignError, align_face, align_paths, detect_faces, ffhq_quad, paste_back
from recon.data.imageio import PhotoError, load_photo
from recon.metrics import psnr

GOLDEN = GOLDEN_ALIGN


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN / "landmarks.json").read_text())


def golden_faces(golden):
    for name, im in golden["images"].items():
        for f in im["faces"]:
            yield name, f


def test_alignment_math_matches_official(golden):
    """Fed the golden landmarks: quads within 1e-3 px, faces within 45 dB (in practice bit-exact)."""
    checked = 0
    for name, f in golden_faces(golden):
        rgb, _ = load_photo(FACES / name)
        lm = np.array(f["landmarks"], dtype=np.float64)
        quad, qsize = ffhq_quad(lm)
        assert np.abs(quad - np.array(f["quad"])).max() < 1e-3, f["file"]
        assert abs(qsize - f["qsize"]) < 1e-3
        face = align_face(rgb, lm)
        assert face.image.shape == (1024, 1024, 3) and face.image.dtype == np.uint8
        gold = np.asarray(Image.open(GOLDEN / f["file"]).convert("RGB"))
        assert psnr(face.image, gold) >= 45.0, f["file"]
        assert face.crop == f["crop"] and face.border == f["border"] and face.pad_needed == f["pad_needed"]
        assert face.pad_applied == (f["pad_applied"] or [0, 0, 0, 0])
        checked += 1
    assert checked == 11


def test_end_to_end_on_the_fixture_photos(golden, tmp_path):
    """Own decoding + detection + landmarks: the same faces (bar the false positive that the score
    threshold drops), the same integer landmarks, the same 45 dB bar; no-face photos recorded."""
    manifest = align_paths([FACES], tmp_path, Align(min_score=0.5), progress=False)
    assert sorted(manifest["no_face"]) == sorted(golden["no_face"])
    expected = [(n, f) for n, f in golden_faces(golden) if f["score"] >= 0.5]
    assert len(expected) == 10  # the astronaut's mission patch (0.117) is the one dropped
    for name, im in golden["images"].items():
        ours = manifest["images"][name]["faces"]
        theirs = [f for f in im["faces"] if f["score"] >= 0.5]
        assert len(ours) == len(theirs), name
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert a["file"] == f"{name.rsplit('.', 1)[0]}_{k}.png"
            assert a["box"] == b["box"] and a["landmarks"] == b["landmarks"], name
            assert np.abs(np.array(a["quad"]) - np.array(b["quad"])).max() < 1e-3
            out = np.asarray(Image.open(tmp_path / a["file"]))
            gold = np.asarray(Image.open(GOLDEN / b["file"]).convert("RGB"))
            assert psnr(out, gold) >= 45.0, a["file"]
    assert json.loads((tmp_path / "manifest.json").read_text())["no_face"] == manifest["no_face"]


def test_false_positive_kept_with_zero_threshold(golden):
    rgb, _ = load_photo(FACES / "astronaut.png")
    dets = detect_faces(rgb, min_score=0.0)
    assert [d.box for d in dets] == [f["box"] for f in golden["images"]["astronaut.png"]["faces"]]
    assert dets[0].score == pytest.approx(0.116614, abs=1e-5)


def face_interior(shape, quad, margin=0.05):
    q = np.asarray(quad)
    A = np.stack([q[3] - q[0], q[1] - q[0]], 1)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    t = np.stack([xs - q[0][0], ys - q[0][1]], -1) @ np.linalg.inv(A).T
    return ((t > margin) & (t < 1 - margin)).all(-1)


def test_paste_back_reproduces_the_photo(golden):
    for name, f in golden_faces(golden):
        if f["score"] < 0.5:
            continue
        rgb, _ = load_photo(FACES / name)
        gold = np.asarray(Image.open(GOLDEN / f["file"]).convert("RGB"))
        out = paste_back(rgb, gold, np.array(f["quad"]))
        region = face_interior(rgb.shape, f["quad"])
        assert psnr(out, rgb, region) >= 37.0, f["file"]
        # Outside the quad the photo is untouched.
        outside = ~face_interior(rgb.shape, f["quad"], margin=-0.01)
        assert np.array_equal(out[outside], rgb[outside])


def test_paste_back_places_a_changed_face_where_it_belongs(golden):
    name, f = "grace_hopper.jpg", golden["images"]["grace_hopper.jpg"]["faces"][0]
    rgb, _ = load_photo(FACES / name)
    red = np.zeros((1024, 1024, 3), np.uint8)
    red[..., 0] = 255
    out = paste_back(rgb, red, np.array(f["quad"]))
    inner = face_interior(rgb.shape, f["quad"], margin=0.06)
    assert (out[inner] == [255, 0, 0]).all()


def test_degenerate_landmarks_are_refused():
    lm = np.zeros((68, 2))
    with pytest.raises(AlignError, match="degenerate"):
        ffhq_quad(lm)
    with pytest.raises(AlignError, match="68 finite"):
        ffhq_quad(np.full((68, 2), np.nan))


# ---------------------------------------------------------------------------------------------
# Input decoding cases

@pytest.fixture(scope="module")
def hopper():
    rgb, _ = load_photo(FACES / "grace_hopper.jpg")
    return rgb


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_exif_orientation_is_applied(hopper, tmp_path):
    img = Image.fromarray(hopper)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    stored = img.transpose(Image.Transpose.ROTATE_90)
    path = _save(stored, tmp_path / "rot.png", exif=exif.tobytes())
    rgb, info = load_photo(path)
    assert info["exif_orientation"] == 6
    assert np.array_equal(rgb, hopper)
    dets = detect_faces(rgb)
    assert len(dets) == 1


def test_grayscale_palette_cmyk_and_alpha(hopper, tmp_path):
    gray = Image.fromarray(hopper).convert("L")
    rgb, info = load_photo(_save(gray, tmp_path / "g.png"))
    assert info["mode"] == "L" and rgb.shape[2] == 3 and np.array_equal(rgb[..., 0], rgb[..., 2])

    pal = Image.fromarray(hopper).convert("P")
    rgb, _ = load_photo(_save(pal, tmp_path / "p.png"))
    assert np.array_equal(rgb, np.asarray(pal.convert("RGB")))

    cmyk = Image.fromarray(hopper).convert("CMYK")
    rgb, _ = load_photo(_save(cmyk, tmp_path / "c.tif"))
    assert psnr(rgb, np.asarray(cmyk.convert("RGB"))) > 60

    rgba = Image.fromarray(hopper).convert("RGBA")
    a = np.array(rgba)
    a[:50, :, 3] = 0  # fully transparent top band
    rgb, info = load_photo(_save(Image.fromarray(a), tmp_path / "a.png"))
    assert info.get("composited_alpha") and (rgb[:50] == 255).all()
    assert np.array_equal(rgb[60:], hopper[60:])

    opaque = Image.fromarray(hopper).convert("RGBA")
    rgb, info = load_photo(_save(opaque, tmp_path / "o.png"))
    assert not info.get("composited_alpha") and np.array_equal(rgb, hopper)


def test_16_bit_is_scaled_not_clipped(hopper, tmp_path):
    gray8 = np.asarray(Image.fromarray(hopper).convert("L"))
    gray16 = (gray8.astype(np.uint16) * 257)
    path = _save(Image.fromarray(gray16), tmp_path / "g16.png")
    rgb, info = load_photo(path)
    assert info["scaled_from"].startswith("I")
    assert np.array_equal(rgb[..., 0], gray8)


def test_animated_takes_first_frame(hopper, tmp_path):
    frames = [Image.fromarray(hopper).convert("P"), Image.fromarray(255 - hopper).convert("P")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    rgb, info = load_photo(path)
    assert info["frames"] == 2
    assert psnr(rgb, np.asarray(frames[0].convert("RGB"))) > 40


def test_bad_files_name_the_file(hopper, tmp_path):
    trunc = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    Image.fromarray(hopper).save(buf, format="JPEG")
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(PhotoError, match=r"trunc\.jpg: cannot decode"):
        load_photo(trunc)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(PhotoError, match=r"notes\.png: not an image"):
        load_photo(text)
    with pytest.raises(PhotoError, match="exceeds the limit"):
        load_photo(_save(Image.fromarray(hopper), tmp_path / "big.png"), max_pixels=1000)


def test_unreadable_photos_are_skipped_and_listed_and_no_face_at_all_is_an_error(hopper, tmp_path, capfd):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _save(Image.fromarray(hopper), src / "a_good.png")
    (src / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    buf = io.BytesIO()
    Image.fromarray(hopper).save(buf, format="JPEG")
    (src / "c_trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (src / "d_text.jpg").write_text("not a photo")
    manifest = align_paths([src], out, Align(resolution=256), progress=False)
    assert (out / "a_good_0.png").is_file() and list(manifest["images"]) == ["a_good.png"]
    assert [u["photo"] for u in manifest["unreadable"]] == ["b_broken.png", "c_trunc.jpg", "d_text.jpg"]
    assert "cannot decode" in manifest["unreadable"][1]["reason"] and "not an image" in manifest["unreadable"][2]["reason"]
    assert json.loads((out / "manifest.json").read_text())["unreadable"] == manifest["unreadable"]
    err = capfd.readouterr().err
    assert "align: warning: c_trunc.jpg skipped:" in err and not list(out.glob(".*tmp*"))
    (src / "a_good.png").unlink()
    with pytest.raises(AlignError, match=r"no usable face in 3 photos \(b_broken.png: .*; d_text.jpg: "):
        align_paths([src], tmp_path / "none", Align(resolution=256), progress=False)


def test_no_face_reported_and_others_go_on(hopper, tmp_path, capfd):
    src = tmp_path / "src"
    src.mkdir()
    _save(Image.fromarray(hopper), src / "hopper.png")
    coffee = FACES / "no_face_coffee.png"
    (src / "coffee.png").write_bytes(coffee.read_bytes())
    manifest = align_paths([src], tmp_path / "out", Align(resolution=256), progress=False)
    assert manifest["no_face"] == ["coffee.png"]
    assert len(manifest["images"]["hopper.png"]["faces"]) == 1
    assert "coffee.png: no usable face found" in capfd.readouterr().err


def test_several_faces_left_to_right_and_selection(tmp_path):
    path = FACES / "group_meeting.jpg"
    m = align_paths([path], tmp_path / "all", Align(resolution=128), progress=False)
    faces = m["images"]["group_meeting.jpg"]["faces"]
    assert [f["file"] for f in faces] == [f"group_meeting_{k}.png" for k in range(3)]
    xs = [(f["box"][0] + f["box"][2]) / 2 for f in faces]
    assert xs == sorted(xs)
    assert faces[1]["padded"] and not faces[0]["padded"]
    largest = align_paths([path], tmp_path / "one", Align(resolution=128, largest_only=True), progress=False)
    (only,) = largest["images"]["group_meeting.jpg"]["faces"]
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert only["box"] == faces[int(np.argmax(areas))]["box"]
    two = align_paths([path], tmp_path / "two", Align(resolution=128, max_faces=2), progress=False)
    assert len(two["images"]["group_meeting.jpg"]["faces"]) == 2


def test_cnn_detector_finds_the_profile_the_hog_misses():
    rgb, _ = load_photo(FACES / "gray_cameraman_profile.png")
    assert detect_faces(rgb, "hog") == []
    dets = detect_faces(rgb, "cnn", min_score=0.0)
    assert len(dets) == 1 and 50 < dets[0].box[2] - dets[0].box[0] < 100


def test_cli_align(tmp_path):
    path = FACES / "luciano.png"
    res = subprocess.run([sys.executable, "-m", "recon.cli", "align", str(path), "--out", str(tmp_path),
                          "--size", "256"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "luciano_0.png").size == (256, 256)
    res = subprocess.run([sys.executable, "-m", "recon.cli", "align", str(path), "--out", str(tmp_path),
                          "--size", "256"], capture_output=True, text=True)
    assert res.returncode == 1 and "earlier alignment" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "recon.cli", "align", str(tmp_path / "nope.png"), "--out",
                          str(tmp_path / "new")], capture_output=True, text=True)
    assert res.returncode == 1 and "nope.png: no such file" in res.stderr
