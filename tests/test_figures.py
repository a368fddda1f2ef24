"""Report figures drawn the cheap way show the same pixels as drawn the plain way."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from reports import figures as F


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGBA"))


@pytest.fixture
def lesion() -> np.ndarray:
    mask = np.zeros((900, 700), bool)
    mask[200:500, 150:420] = True
    mask[600:650, 500:560] = True
    return mask


def test_outline_drawn_once_then_rings_equals_marks_drawn_whole(lesion) -> None:
    peaks = np.array([[250.0, 300.0], [10.0, 690.0], [620.0, 530.0]])
    outline = F.marks_layer(lesion)
    assert np.array_equal(F.draw_rings(outline.copy(), peaks), F.marks_layer(lesion, peaks))
    assert not np.array_equal(F.draw_rings(outline.copy(), peaks), outline)


def test_marks_palette_png_is_lossless_and_refuses_other_colours(lesion) -> None:
    layer = F.marks_layer(lesion, np.array([[300.0, 300.0]]))
    uri = F.marks_data_uri(layer)
    assert np.array_equal(decode(uri), layer)
    assert len(uri) < len(F.png_data_uri(layer))
    layer[0, 0] = (1, 2, 3, 255)
    with pytest.raises(ValueError, match="MARK_COLOURS"):
        F.marks_data_uri(layer)


def test_scaled_nearest_equals_nearest_then_scale() -> None:
    rng = np.random.default_rng(0)
    values = np.where(rng.random((37, 51)) > 0.3, rng.gamma(1.0, size=(37, 51)), np.nan)
    values[:5] = 0.0  # ties at the bottom, as in a ReLU'd CAM
    scale = F.percentile_scale(values)
    for shape in (F.display_shape(values.shape, 1024, enlarge=True), (20, 9)):  # up and down
        assert np.array_equal(F.scaled_nearest(values, scale, shape), scale(F.nearest(values, shape)),
                              equal_nan=True)


def test_deletion_plot_reads_plain_numbers_from_zero_when_the_curves_stay_near_one() -> None:
    fig = F.deletion_figure([0.1, 0.2, 0.5], {"gradcam": [0.9, 0.9 - 1e-7, 0.9 - 2e-7, 0.9 - 3e-7]},
                            [0.9, 0.9, 0.9 - 1e-7, 0.9], {"gradcam": "Grad-CAM"})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1
    assert ax.yaxis.get_major_formatter().get_offset() == ""  # it read "1e-7+1"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "0.0" in labels and "1.0" in labels
    assert all(float(text) <= 1.2 for text in labels)


def test_the_colour_map_rises_in_lightness_so_it_reads_without_hue() -> None:
    from skimage.color import rgb2lab

    lightness = rgb2lab(F.colourise(np.linspace(0, 1, 64))[None])[0, :, 0]
    assert np.all(np.diff(lightness) > 0)  # monotone L*: in grey and under any colour blindness
    assert lightness[-1] - lightness[0] > 60
