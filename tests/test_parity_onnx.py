"""End-to-end parity: every method through ONNX Runtime vs the torch references.

``forward = ExplainSession(explain.onnx)`` -- the explain model exported from a CNN that is
*not* one of models/ (conv/BN/ReLU/MaxPool/residual/GAP/Linear, defined here) and
augmented with our reverse-mode pass -- drives each method of ``METHODS``; the reference
runs on the *torch* model, same images and classes:

* Captum: LayerGradCam, Saliency, InputXGradient, NoiseTunnel(Saliency) fed the same noise,
  IntegratedGradients, GuidedBackprop, GuidedGradCam (bilinear and nearest);
* pytorch-grad-cam: GradCAM++, XGradCAM, HiResCAM, LayerCAM, ScoreCAM, EigenCAM's projection;
* the published formulas in torch autograd (``_torch_cam_formulas`` of
  test_methods_reference): Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Eigen-CAM, Score-CAM;
* CAM from the torch ``nn.Linear`` weights.

Agreement: after per-image min-max normalisation, Pearson >= 0.999 and max |diff| <= 1e-3
(``assert_agree``), plus a check of the raw (unnormalised) numbers where the reference
returns them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from torch import nn  # noqa: E402

from onnx_explain import contract  # noqa: E402
from onnx_explain.augment import augment_model  # noqa: E402
from onnx_explain.images import load_image  # noqa: E402
from onnx_explain.methods import METHODS, create  # noqa: E402
from onnx_explain.preprocess import preprocess_batch  # noqa: E402
from onnx_explain.session import ExplainSession  # noqa: E402
from test_methods_reference import (  # noqa: E402
    _import_pytorch_grad_cam,
    _torch_cam_formulas,
    assert_agree,
    run_pgc,
    to_input_size,
    tt,
)
from torch_reference import export  # noqa: E402

SIZE = 64
CLASSES = 5
FEATURE = SIZE // 4  # the target layer's resolution


class ParityNet(nn.Module):
    """stem conv-BN-ReLU-maxpool, strided conv-BN-ReLU, a residual block, GAP, Linear.

    The target layer (the block's output ReLU, the last activation every path goes through)
    is called ``relu3`` so that the helpers of test_methods_reference, which hook
    ``model.relu3``, apply unchanged.  Every ReLU is its own ``nn.ReLU`` module, used once,
    so Captum's guided backprop (module hooks) guides exactly the ReLUs the graph has.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.res_conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.res_bn1 = nn.BatchNorm2d(16)
        self.res_relu = nn.ReLU()
        self.res_conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.res_bn2 = nn.BatchNorm2d(16)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        y = self.res_bn2(self.res_conv2(self.res_relu(self.res_bn1(self.res_conv1(x)))))
        x = self.relu3(x + y)
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ParityNet()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                mod.bias.normal_(0, 0.05)
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics (folded by the exporter)
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.6, 1.4)
                mod.bias.uniform_(-0.1, 0.1)
        m.fc.weight.normal_(0, 0.3)
        m.fc.bias.uniform_(-0.2, 0.2)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def session(model, tmp_path_factory):
    plain = export(model, torch.randn(2, 3, SIZE, SIZE))
    proto = augment_model(plain, input_gradients=True, guided=True, gradcam=True)
    path = tmp_path_factory.mktemp("parity") / "parity.explain.onnx"
    onnx.save(proto, str(path))
    s = ExplainSession(path, device="cpu", threads=1)
    assert s.metadata.target_layer  # the automatically chosen layer ...
    assert s.cam_head is not None  # ... feeds the GAP + linear head
    return s


@pytest.fixture(scope="module")
def images(session, photos):
    """The three scikit-image photos, preprocessed the way the model's metadata says."""
    batch, _ = preprocess_batch([load_image(p) for p in photos], session.preprocess)
    assert batch.shape == (3, 3, SIZE, SIZE)
    return batch


@pytest.fixture(scope="module")
def classes(model, images):
    """Top-1 for two images, another class for the second (explicit targets go through)."""
    with torch.no_grad():
        top = model(tt(images)).argmax(1).numpy()
    return np.array([top[0], (top[1] + 1) % CLASSES, top[2]], dtype=np.int64)


@pytest.fixture(scope="module")
def pgc():
    mod = _import_pytorch_grad_cam()
    if mod is None:
        pytest.skip("pytorch-grad-cam not installed")
    return mod


def assert_raw_close(ours, ref, what, rel=2e-3):
    """Unnormalised numbers: max |diff| within ``rel`` of the reference's range."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shapes {ours.shape} vs {ref.shape}"
    scale = np.abs(ref).max()
    assert scale > 0, f"{what}: reference is all zero"
    err = np.abs(ours - ref).max() / scale
    assert err <= rel, f"{what}: max |diff| {err:.2e} of the reference's range"


# ----------------------------------------------------------------------------------------


def test_session_forward_matches_torch(model, session, images, classes):
    """The ingredients first: logits, A, dY/dA, dY/dX through ORT vs autograd."""
    from torch_reference import autograd

    got = session(images, classes, ["logits", contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS,
                                    contract.GRAD_INPUT, contract.TARGET_CLASS, contract.SCORE])
    logits, a, ga, gx, chosen = autograd(model, model.relu3, tt(images), classes)
    np.testing.assert_array_equal(got[contract.TARGET_CLASS], chosen)
    assert_raw_close(got["logits"], logits, "logits", 1e-5)
    assert_raw_close(got[contract.ACTIVATIONS], a, "activations", 1e-5)
    assert_raw_close(got[contract.GRAD_ACTIVATIONS], ga, "grad_activations", 1e-5)
    assert_raw_close(got[contract.GRAD_INPUT], gx, "grad_input", 1e-5)
    np.testing.assert_allclose(got[contract.SCORE], logits[np.arange(3), classes], rtol=1e-5)
    assert a.shape == (3, 16, FEATURE, FEATURE)


def test_every_method_is_covered():
    covered = {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "cam",
               "saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
               "guided_gradcam"}
    assert set(METHODS) == covered, "a method was added: give it an ONNX parity test here"


def test_gradcam(model, session, images, classes):
    res = create("gradcam", session).attribute(images, classes)
    assert res.maps.shape == (3, FEATURE, FEATURE)
    np.testing.assert_array_equal(res.target_class, classes)
    ref = captum_attr.LayerGradCam(model, model.relu3).attribute(
        tt(images), target=tt(classes), relu_attributions=True)[:, 0].detach().numpy()
    assert_agree(res.maps, ref, "gradcam/captum")
    assert_raw_close(res.maps, ref, "gradcam/captum")


def test_cam_family_vs_pytorch_grad_cam(pgc, model, session, images, classes):
    cases = [
        ("gradcam", {}, pgc.GradCAM, {}),
        ("gradcam++", {"eps": 1e-6}, pgc.GradCAMPlusPlus, {}),
        ("xgradcam", {}, pgc.XGradCAM, {}),
        ("hirescam", {}, pgc.HiResCAM, {}),
        ("layercam", {}, pgc.LayerCAM, {}),
        ("scorecam", {"weighting": "channel_softmax", "align_corners": True}, pgc.ScoreCAM, {"batch_size": 16}),
    ]
    for name, opts, cls, attrs in cases:
        ours = create(name, session, **opts).attribute(images, classes, batch_size=16)
        ref = run_pgc(pgc, cls, model, images, classes, **attrs)
        assert_agree(to_input_size(ours.maps, (SIZE, SIZE)), ref, f"{name}/pytorch-grad-cam")


def test_eigencam_vs_pytorch_grad_cam(pgc, model, session, images):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    ours = create("eigencam", session).attribute(images)
    store = {}
    h = model.relu3.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    with torch.no_grad():
        model(tt(images))
    h.remove()
    ref = np.maximum(get_2d_projection_with_sign_correction(store["A"].numpy()), 0)
    assert_agree(ours.maps, ref, "eigencam/pytorch-grad-cam")


def test_cam_family_vs_formulas(model, session, images, classes):
    refs = _torch_cam_formulas(model, images, classes)
    assert set(refs) == {"gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam"}
    for name, ref in refs.items():
        ours = create(name, session).attribute(images, classes, batch_size=16)
        assert_agree(ours.maps, ref, f"{name}/formula")
        if name != "eigencam":  # Eigen-CAM's scale is the SVD's, not a model quantity
            assert_raw_close(ours.maps, ref, f"{name}/formula")


def test_cam_from_torch_linear_weights(model, session, images, classes):
    w, b = session.cam_weights()  # read from the ONNX graph by the runtime
    np.testing.assert_allclose(w, model.fc.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b, model.fc.bias.numpy(), atol=1e-7)
    res = create("cam", session, weights=w).attribute(images, classes)
    store = {}
    h = model.relu3.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    with torch.no_grad():
        model(tt(images))
    h.remove()
    ref = torch.relu(torch.einsum("nk,nkhw->nhw", model.fc.weight[tt(classes)], store["A"])).numpy()
    assert_agree(res.maps, ref, "cam/torch weights")
    assert_raw_close(res.maps, ref, "cam/torch weights")
    # GAP + linear head: Grad-CAM is CAM / (h w), through the gradient subgraph
    gc = create("gradcam", session).attribute(images, classes)
    assert_raw_close(gc.maps * FEATURE * FEATURE, res.maps, "gradcam*hw vs cam", 1e-4)


def test_saliency(model, session, images, classes):
    res = create("saliency", session).attribute(images, classes)
    ref = captum_attr.Saliency(model).attribute(tt(images), target=tt(classes), abs=True).detach().numpy()
    assert res.maps.shape == (3, SIZE, SIZE)
    assert_raw_close(res.attributions, ref, "saliency attributions")
    assert_agree(res.maps, ref.max(axis=1), "saliency/captum")


def test_gradient_x_input(model, session, images, classes):
    res = create("gradient_x_input", session).attribute(images, classes)
    ref = captum_attr.InputXGradient(model).attribute(tt(images), target=tt(classes)).detach().numpy()
    assert_raw_close(res.attributions, ref, "gradient_x_input attributions")
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), "gradient_x_input/captum")


def test_smoothgrad_same_noise_as_captum(model, session, images, classes, monkeypatch):
    n = 6
    res = create("smoothgrad", session, n_samples=n, stdev_spread=0.2, seed=5).attribute(
        images, classes, batch_size=8)
    # the noise our method drew (image-major rows, per-image sigma), handed to Captum
    rng = np.random.default_rng(5)
    flat = images.reshape(3, -1)
    sig = 0.2 * (flat.max(1) - flat.min(1))
    noise = np.stack([rng.standard_normal(images.shape[1:], dtype=np.float32) * np.float32(sig[i])
                      for i in range(3) for _ in range(n)])
    drawn = []

    def fake_normal(mean, std, *args, **kwargs):
        assert tuple(std.shape) == noise.shape
        drawn.append(1)
        return torch.from_numpy(noise)

    monkeypatch.setattr(torch, "normal", fake_normal)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    ref = nt.attribute(tt(images), nt_type="smoothgrad", nt_samples=n, stdevs=1.0, target=tt(classes)).detach().numpy()
    assert drawn == [1]
    assert_raw_close(res.attributions, ref, "smoothgrad attributions")
    assert_agree(res.maps, ref.max(axis=1), "smoothgrad/captum")


def test_integrated_gradients(model, session, images, classes):
    steps = 32
    res = create("integrated_gradients", session, n_steps=steps).attribute(images, classes, batch_size=32)
    ref, delta = captum_attr.IntegratedGradients(model).attribute(
        tt(images), baselines=torch.zeros_like(tt(images)), target=tt(classes), n_steps=steps,
        method="gausslegendre", return_convergence_delta=True)
    ref = ref.numpy()
    assert_raw_close(res.attributions, ref, "integrated_gradients attributions")
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), "integrated_gradients/captum")
    ours_delta = np.array([e["convergence_delta"] for e in res.extras])
    np.testing.assert_allclose(ours_delta, delta.numpy(), atol=1e-3)


def test_guided_backprop(model, session, images, classes):
    res = create("guided_backprop", session).attribute(images, classes)
    ref = captum_attr.GuidedBackprop(model).attribute(tt(images), target=tt(classes)).detach().numpy()
    assert_raw_close(res.attributions, ref, "guided_backprop attributions")
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), "guided_backprop/captum")
    plain = create("saliency", session, abs=False, reduction="abs_sum").attribute(images, classes)
    assert not np.allclose(res.attributions, plain.attributions), "guided gradient equals the plain one"


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_guided_gradcam(model, session, images, classes, mode):
    res = create("guided_gradcam", session, interpolate=mode).attribute(images, classes)
    ref = captum_attr.GuidedGradCam(model, model.relu3).attribute(
        tt(images), target=tt(classes), interpolate_mode=mode).detach().numpy()
    assert_raw_close(res.attributions, ref, f"guided_gradcam[{mode}] attributions")
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), f"guided_gradcam[{mode}]/captum")
