"""The results stage: the restored photos a user takes home.

``results/<mode>/<photo>.png``: each photo with its restored faces pasted back, and
``results/<mode>/faces/<face>.png``: each restored face. Where the mode's input tells something the
result should keep (:func:`recon.restore.composite.composite_for`), the face is the composite:
for inpainting only the hole is pasted into the photo (feathered), so the rest of the face stays
the photo's own pixels, with no seam; for colorization the input's luminance with the generated
colour. Faces of a mode that have no finished result are left out of its photos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from recon.data.align import paste_back
from recon.data.imageio import load_photo, save_png, write_json
from recon.data.ownfiles import own_dir, remove
from recon.restore.composite import composite_for
from recon.restore.degrade import parse_ops

from .records import Target, Targets

HOLE_GROW = 0.02            # the pasted region reaches this fraction of the side past the hole


def restored_face(target: Target, folder: Path, degraded_dir: Path, ops) -> np.ndarray:
    """The face to take home: the generated one, or its composite with what the input knows."""
    generated = load_photo(folder / "image.png")[0]
    combine = composite_for(ops)
    if combine is None:
        return generated
    observed = load_photo(degraded_dir / target.degraded)[0]
    return combine[1](generated, observed, hole_of(target, degraded_dir, generated.shape[0]))


def hole_of(target: Target, degraded_dir: Path, size: int) -> Optional[np.ndarray]:
    """The face's hole ``[size, size]`` bool (True = missing), or None without a mask."""
    if not target.mask:
        return None
    m = Image.open(degraded_dir / target.mask).convert("L").resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(m) >= 128


def paste_region(target: Target, degraded_dir: Path, size: int) -> Optional[np.ndarray]:
    """Where a face may change its photo, ``[size, size]`` in [0, 1]: a mask mode's hole grown by
    :data:`HOLE_GROW` and feathered (the known pixels are the photo's already); None (all of it)
    otherwise."""
    hole = hole_of(target, degraded_dir, size)
    if hole is None:
        return None
    from scipy.ndimage import distance_transform_edt
    outside = distance_transform_edt(~hole)                 # distance from the hole, in pixels
    grow = max(2.0, HOLE_GROW * size)
    return np.clip(1.0 - (outside - grow) / grow, 0.0, 1.0)


def results_stage(modes: List[str], data_dir, raw_dir, out_dir, photos: Optional[Dict[str, Path]] = None,
                  flat: bool = False) -> Dict[str, dict]:
    """Write every mode's restored photos and faces into ``out_dir`` (made anew, but for hidden
    entries); returns per mode ``{photos: [...], faces: [...]}`` (also ``out_dir/index.json``).
    ``photos``: the photos by name (default: in ``raw_dir``); ``flat``: one mode, written in
    ``out_dir`` itself (``recon restore``)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    own_dir(out_dir)
    for entry in out_dir.iterdir():
        if not entry.name.startswith("."):
            remove(entry)
    index: Dict[str, dict] = {}
    for mode in modes:
        degraded_dir, projected = data_dir / "degraded" / mode, data_dir / "projected" / mode
        if not (degraded_dir / "targets.json").is_file():
            continue
        targets = Targets.load(degraded_dir)
        mode_dir = out_dir if flat else own_dir(out_dir / mode)
        done: Dict[str, list] = {}
        faces = []
        for target in targets.faces:
            folder = projected / target.name
            if not (folder / "done.json").is_file():
                continue
            face = restored_face(target, folder, degraded_dir, parse_ops(targets.ops_of(target)))
            save_png(own_dir(mode_dir / "faces") / f"{target.name}.png", face)
            faces.append(target.name)
            if target.quad is not None:
                done.setdefault(target.photo, []).append((target, face))
        written: List[str] = []
        for photo, items in sorted(done.items()):
            path = photos[photo] if photos is not None else Path(raw_dir) / photo
            if not path.is_file():
                continue
            rgb, _ = load_photo(path)
            for target, face in items:
                region = paste_region(target, degraded_dir, face.shape[0])
                rgb = paste_back(rgb, face, np.asarray(target.quad), mask=region)
            name = f"{Path(photo).stem}.png"
            if name in written:                     # a.jpg and a.png: the second keeps its extension
                name = f"{photo}.png"
            save_png(mode_dir / name, rgb)
            written.append(name)
        index[mode] = dict(photos=written, faces=faces)
    write_json(out_dir / (".index.json" if flat else "index.json"), index)
    return index
