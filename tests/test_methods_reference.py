"""The explanation methods (numpy, over a ``forward`` runner) against independent references.

One small torch CNN stands in for the ONNX model: its ``forward`` runner is built from
torch itself (a hook on the target layer + autograd; guided backprop by a backward hook
clamping every ReLU's gradient).  End-to-end ONNX parity is tested elsewhere.

References, on the same model, images and classes:

* Captum: LayerGradCam, Saliency, InputXGradient, NoiseTunnel(Saliency) fed *the same
  noise* (``torch.normal`` patched to return ours), IntegratedGradients (Gauss-Legendre and
  Riemann), GuidedBackprop, GuidedGradCam (nearest and bilinear);
* pytorch-grad-cam (when installed -- it is imported with stub ``torchvision``/``sklearn``
  modules if those are missing, as only unused helpers need them): GradCAM, GradCAMPlusPlus,
  XGradCAM, HiResCAM, LayerCAM, EigenCAM (its sign-corrected projection), ScoreCAM;
* the published formulas written in torch (always): Grad-CAM++, XGrad-CAM, HiResCAM,
  LayerCAM, Eigen-CAM, Score-CAM, CAM.

Agreement: after per-image min-max normalisation, Pearson >= 0.999 and max |diff| <= 1e-3.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
cv2 = pytest.importorskip("cv2")

from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from onnx_explain import contract  # noqa: E402
from onnx_explain.methods import (  # noqa: E402
    LOGITS,
    METHODS,
    PROBABILITIES,
    Attribution,
    create,
    normalize01,
    resize_bilinear,
    resize_nearest,
)

N_CLASSES = 6
SIZE = 48


# ----------------------------------------------------------------------------------------
# the model and its torch-backed runner


class SmallNet(nn.Module):
    """conv-relu-pool x2, conv-relu (target layer ``relu3``, 12x12), conv-relu (``relu4``,
    the CAM layer) -> global average pool -> linear."""

    def __init__(self, classes: int = N_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(16, 24, 3, padding=1)
        self.relu4 = nn.ReLU()
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        return self.fc(x.mean(dim=(2, 3)))


def torch_forward(model: nn.Module, layer: nn.Module):
    """A :class:`onnx_explain.methods.Forward` over torch: hooks + autograd."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]

    def forward(inputs, target, outputs):
        outputs = list(outputs)
        x = torch.from_numpy(np.array(inputs, dtype=np.float32)).requires_grad_(True)
        store = {}
        hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
        try:
            logits = model(x)
        finally:
            hook.remove()
        tgt = torch.from_numpy(np.asarray(target, dtype=np.int64))
        tc = torch.where(tgt < 0, logits.argmax(dim=1), tgt)
        score = logits.gather(1, tc[:, None])[:, 0]
        res = {}
        if contract.GRAD_ACTIVATIONS in outputs or contract.GRAD_INPUT in outputs:
            ga, gx = torch.autograd.grad(score.sum(), [store["A"], x])
            res[contract.GRAD_ACTIVATIONS] = ga.numpy()
            res[contract.GRAD_INPUT] = gx.numpy()
        if contract.GUIDED_GRAD_INPUT in outputs:
            hooks = [r.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),)) for r in relus]
            try:
                x2 = torch.from_numpy(np.array(inputs, dtype=np.float32)).requires_grad_(True)
                s2 = model(x2).gather(1, tc[:, None]).sum()
                (g2,) = torch.autograd.grad(s2, x2)
            finally:
                for h in hooks:
                    h.remove()
            res[contract.GUIDED_GRAD_INPUT] = g2.numpy()
        res[contract.ACTIVATIONS] = store["A"].detach().numpy()
        res[contract.TARGET_CLASS] = tc.numpy()
        res[contract.SCORE] = score.detach().numpy()
        res[LOGITS] = logits.detach().numpy()
        res[PROBABILITIES] = torch.softmax(logits, dim=1).detach().numpy()
        return {k: res[k] for k in outputs}

    return forward


class Recorder:
    """Wraps a forward; records the batch sizes it was called with."""

    def __init__(self, forward):
        self.forward = forward
        self.calls: list[int] = []

    def __call__(self, inputs, target, outputs):
        self.calls.append(int(inputs.shape[0]))
        return self.forward(inputs, target, outputs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SmallNet().eval()
    with torch.no_grad():  # an init that makes the logits depend on the input (and on masks)
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                mod.bias.normal_(0, 0.05)
        m.fc.weight.normal_(0, 0.3)
        m.fc.bias.zero_()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The model is tiny: one thread is faster and does not fight other test processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    # some spatial structure: a bright blob per image at a different place
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i, (cy, cx) in enumerate([(12, 30), (30, 14), (24, 24)]):
        x[i] += 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)[None]
    return x


@pytest.fixture(scope="module")
def fwd(model):
    return torch_forward(model, model.relu3)


@pytest.fixture(scope="module")
def classes(model, images):
    """Explain a non-top-1 class for one image, to exercise explicit targets."""
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    top = logits.argmax(1).numpy()
    return np.array([top[0], (top[1] + 1) % N_CLASSES, top[2]], dtype=np.int64)


def tt(a):
    return torch.from_numpy(np.asarray(a))


def layer_tensors(model, layer, images, classes):
    """(A, dY/dA) from torch directly, for the formula references."""
    x = tt(images).clone().requires_grad_(True)
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    logits = model(x)
    h.remove()
    score = logits.gather(1, tt(classes)[:, None]).sum()
    (g,) = torch.autograd.grad(score, store["A"])
    return store["A"].detach(), g


# ----------------------------------------------------------------------------------------
# agreement


def assert_agree(ours, ref, what="", corr_min=0.999, diff_max=1e-3):
    a = normalize01(np.asarray(ours, dtype=np.float32))
    b = normalize01(np.asarray(ref, dtype=np.float32))
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    for i in range(a.shape[0]):
        assert b[i].max() > 0, f"{what}: reference map {i} is constant, test is vacuous"
        r = np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1]
        d = np.abs(a[i] - b[i]).max()
        assert r >= corr_min and d <= diff_max, f"{what} image {i}: pearson {r:.6f}, max|diff| {d:.2e}"


def to_input_size(maps, size=(SIZE, SIZE)):
    """Our feature-resolution maps the way pytorch-grad-cam finishes its own: min-max,
    cv2.resize to the input, min-max again."""
    m = normalize01(maps)
    return np.stack([cv2.resize(mi, (size[1], size[0])) for mi in m])


# ----------------------------------------------------------------------------------------
# pytorch-grad-cam, if installed (without torchvision/sklearn when those are missing)


def _import_pytorch_grad_cam():
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None
    stubs: dict[str, types.ModuleType] = {}

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except Exception:
            return True

    if missing("torchvision"):
        tv, tvt, tvf = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                       "torchvision.transforms.functional"))
        tvt.Compose = tvt.Normalize = tvt.ToTensor = object
        tvf.resize = None
        tv.transforms, tvt.functional = tvt, tvf
        stubs.update({"torchvision": tv, "torchvision.transforms": tvt, "torchvision.transforms.functional": tvf})
    if missing("sklearn"):
        sk, skd = types.ModuleType("sklearn"), types.ModuleType("sklearn.decomposition")
        skd.KernelPCA = skd.NMF = object
        sk.decomposition = skd
        stubs.update({"sklearn": sk, "sklearn.decomposition": skd})
    saved = {k: sys.modules[k] for k in stubs if k in sys.modules}
    sys.modules.update(stubs)
    try:
        return importlib.import_module("pytorch_grad_cam")
    except Exception:
        for k in [k for k in sys.modules if k.startswith("pytorch_grad_cam")]:
            del sys.modules[k]
        return None
    finally:  # the stubs only serve this import; nobody else should see them
        for k in stubs:
            sys.modules.pop(k, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def pgc():
    mod = _import_pytorch_grad_cam()
    if mod is None:
        pytest.skip("pytorch-grad-cam not installed")
    return mod


def run_pgc(pgc, cls, model, images, classes, **attrs):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[model.relu3])
    for k, v in attrs.items():
        setattr(cam, k, v)
    with torch.enable_grad():
        out = cam(input_tensor=tt(images).clone().requires_grad_(True), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    cam.activations_and_grads.release()
    return out


# ----------------------------------------------------------------------------------------
# registry and API


def test_registry_names():
    assert set(METHODS) == {
        "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam",
        "saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
        "guided_gradcam",
    }
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.resolution in ("feature", "input")
    with pytest.raises(ValueError, match="unknown explanation method"):
        create("nope", lambda *a: {})


def test_methods_do_not_import_torch():
    import subprocess

    code = "import sys, onnx_explain.methods; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_normalize01():
    z = normalize01(np.zeros((2, 4, 5), np.float32))
    assert z.shape == (2, 4, 5) and not np.isnan(z).any() and not z.any()
    c = normalize01(np.full((3, 3), 7.0, np.float32))
    assert not c.any()
    m = normalize01(np.array([[[1.0, 3.0], [2.0, np.nan]], [[-2.0, -2.0], [-2.0, 0.0]]], np.float32))
    np.testing.assert_allclose(m[0], [[1 / 3, 1.0], [2 / 3, 0.0]], atol=1e-6)
    np.testing.assert_allclose(m[1], [[0, 0], [0, 1]])


def test_resize_matches_torch():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    for size in [(48, 33), (7, 5), (3, 4), (20, 10)]:
        for ac in (False, True):
            ref = F.interpolate(tt(a), size=size, mode="bilinear", align_corners=ac).numpy()
            np.testing.assert_allclose(resize_bilinear(a, size, align_corners=ac), ref, atol=1e-5)
        ref = F.interpolate(tt(a), size=size, mode="nearest").numpy()
        np.testing.assert_array_equal(resize_nearest(a, size), ref)


# ----------------------------------------------------------------------------------------
# CAM family vs Captum / pytorch-grad-cam / formulas


def test_gradcam_vs_captum(model, fwd, images, classes):
    res = create("gradcam", fwd).attribute(images, classes)
    assert isinstance(res, Attribution) and res.resolution == "feature"
    assert res.maps.shape == (3, 12, 12)
    np.testing.assert_array_equal(res.target_class, classes)
    ref = captum_attr.LayerGradCam(model, model.relu3).attribute(
        tt(images), target=tt(classes), relu_attributions=True)
    np.testing.assert_allclose(res.maps, ref[:, 0].detach().numpy(), rtol=1e-4, atol=1e-6)
    assert_agree(res.maps, ref[:, 0].detach().numpy(), "gradcam/captum")


def test_cam_family_vs_pytorch_grad_cam(pgc, model, fwd, images, classes):
    cases = [
        ("gradcam", {}, pgc.GradCAM, {}),
        ("gradcam++", {"eps": 1e-6}, pgc.GradCAMPlusPlus, {}),
        ("xgradcam", {}, pgc.XGradCAM, {}),
        ("hirescam", {}, pgc.HiResCAM, {}),
        ("layercam", {}, pgc.LayerCAM, {}),
        ("scorecam", {"weighting": "channel_softmax", "align_corners": True}, pgc.ScoreCAM, {"batch_size": 8}),
    ]
    for name, opts, cls, attrs in cases:
        ours = create(name, fwd, **opts).attribute(images, classes, batch_size=8)
        ref = run_pgc(pgc, cls, model, images, classes, **attrs)
        assert_agree(to_input_size(ours.maps), ref, f"{name}/pytorch-grad-cam")


def test_eigencam_vs_pytorch_grad_cam(pgc, fwd, images, classes):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    ours = create("eigencam", fwd).attribute(images)
    acts = fwd(images, np.full(3, -1), [contract.ACTIVATIONS])[contract.ACTIVATIONS]
    ref = np.maximum(get_2d_projection_with_sign_correction(acts), 0)
    assert_agree(ours.maps, ref, "eigencam/pytorch-grad-cam")


def _torch_cam_formulas(model, images, classes):
    a, g = layer_tensors(model, model.relu3, images, classes)
    a64, g64 = a.double(), g.double()
    out = {}
    # Grad-CAM++ (paper Eq. 19, no eps; alpha = 0 where g = 0)
    g2, g3 = g64 ** 2, g64 ** 3
    den = 2 * g2 + a64.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(g64 != 0, g2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(g64))
    w = (alpha * g64.clamp(min=0)).sum(dim=(2, 3))
    out["gradcam++"] = torch.relu((w[:, :, None, None] * a64).sum(1))
    # XGrad-CAM (Eq. 7)
    w = (a64 * g64).sum(dim=(2, 3)) / a64.sum(dim=(2, 3)).clamp(min=1e-30)
    out["xgradcam"] = torch.relu((w[:, :, None, None] * a64).sum(1))
    out["hirescam"] = torch.relu((g64 * a64).sum(1))
    out["layercam"] = torch.relu((g64.clamp(min=0) * a64).sum(1))
    # Eigen-CAM: first principal component of the centred (hw x K) activations
    maps = []
    for ai in a64:
        m = ai.reshape(ai.shape[0], -1).T
        m = m - m.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        p = m @ vh[0]
        p = -p if p.min().abs() > p.max().abs() else p
        maps.append(p.reshape(ai.shape[1:]))
    out["eigencam"] = torch.relu(torch.stack(maps))
    # Score-CAM (paper): masks from upsampled, min-max normalised maps; softmax prob of c
    x = tt(images)
    up = F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    masks = torch.where(hi > lo, (up - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(up))
    with torch.no_grad():
        w = torch.stack([
            torch.softmax(model(x[i:i + 1] * masks[i][:, None]), dim=1)[:, classes[i]] for i in range(len(x))
        ])
    w = torch.where((hi > lo)[:, :, 0, 0], w, torch.zeros_like(w))
    out["scorecam"] = torch.relu((w[:, :, None, None] * a).sum(1))
    return {k: v.numpy() for k, v in out.items()}


def test_cam_family_vs_formulas(model, fwd, images, classes):
    refs = _torch_cam_formulas(model, images, classes)
    for name, ref in refs.items():
        ours = create(name, fwd).attribute(images, classes, batch_size=5)
        assert ours.maps.shape == ref.shape
        assert_agree(ours.maps, ref, f"{name}/formula")
        np.testing.assert_allclose(ours.maps, ref, rtol=2e-4, atol=1e-6 * np.abs(ref).max(), err_msg=name)


def test_cam_vs_formula_and_gradcam(model, images, classes):
    fwd4 = torch_forward(model, model.relu4)
    w = model.fc.weight.detach().numpy()
    res = create("cam", fwd4, weights=w).attribute(images, classes)
    a, g = layer_tensors(model, model.relu4, images, classes)
    ref = torch.relu(torch.einsum("nk,nkhw->nhw", model.fc.weight[tt(classes)], a)).numpy()
    np.testing.assert_allclose(res.maps, ref, rtol=1e-4, atol=1e-6)
    assert_agree(res.maps, ref, "cam/formula")
    # GAP + linear head: Grad-CAM == CAM / (h w)
    gc = create("gradcam", fwd4).attribute(images, classes)
    hw = a.shape[2] * a.shape[3]
    np.testing.assert_allclose(gc.maps * hw, res.maps, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        create("cam", fwd4, weights=w[:, :5]).attribute(images)
    with pytest.raises(ValueError, match="out of range"):
        create("cam", fwd4, weights=w[:2]).attribute(images, [5, 5, 5])


# ----------------------------------------------------------------------------------------
# input-space methods vs Captum


def test_saliency_vs_captum(model, fwd, images, classes):
    res = create("saliency", fwd).attribute(images, classes)
    ref = captum_attr.Saliency(model).attribute(tt(images), target=tt(classes), abs=True).numpy()
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-4, atol=1e-7)
    assert res.maps.shape == (3, SIZE, SIZE) and res.resolution == "input"
    assert_agree(res.maps, ref.max(axis=1), "saliency/captum")


def test_gradient_x_input_vs_captum(model, fwd, images, classes):
    res = create("gradient_x_input", fwd).attribute(images, classes)
    ref = captum_attr.InputXGradient(model).attribute(tt(images), target=tt(classes)).detach().numpy()
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-4, atol=1e-7)
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), "gradient_x_input/captum")


def test_smoothgrad_vs_captum_same_noise(model, fwd, images, classes, monkeypatch):
    n = 6
    ours = create("smoothgrad", fwd, n_samples=n, stdev_spread=0.2, seed=7)
    res = ours.attribute(images, classes, batch_size=4)
    # regenerate exactly the noise our method drew (image-major rows), and feed it to Captum
    rng = np.random.default_rng(7)
    sig = 0.2 * (images.reshape(3, -1).max(1) - images.reshape(3, -1).min(1))
    noise = np.stack([rng.standard_normal(images.shape[1:], dtype=np.float32) * np.float32(sig[i])
                      for i in range(3) for _ in range(n)])
    explicit = create("smoothgrad", fwd, n_samples=n).attribute(
        images, classes, noise=noise.reshape((3, n) + images.shape[1:]))
    np.testing.assert_allclose(explicit.attributions, res.attributions, rtol=1e-5, atol=1e-8)

    drawn = []

    def fake_normal(mean, std, *args, **kwargs):
        assert tuple(std.shape) == noise.shape  # Captum draws all (N*n) x C x H x W at once
        drawn.append(1)
        return torch.from_numpy(noise)

    monkeypatch.setattr(torch, "normal", fake_normal)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    ref = nt.attribute(tt(images), nt_type="smoothgrad", nt_samples=n, stdevs=1.0, target=tt(classes)).numpy()
    assert drawn == [1]
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-4, atol=1e-7)
    assert_agree(res.maps, ref.max(axis=1), "smoothgrad/captum")


@pytest.mark.parametrize("method,steps,baseline", [("gausslegendre", 24, None), ("riemann_trapezoid", 16, 0.3)])
def test_integrated_gradients_vs_captum(model, fwd, images, classes, method, steps, baseline):
    ig = create("integrated_gradients", fwd, n_steps=steps, method=method, baseline=baseline)
    calls = []
    res = ig.attribute(images, classes, batch_size=7, progress=lambda d, t: calls.append((d, t)))
    base = torch.zeros_like(tt(images)) if baseline is None else torch.full_like(tt(images), baseline)
    ref, delta = captum_attr.IntegratedGradients(model).attribute(
        tt(images), baselines=base, target=tt(classes), n_steps=steps, method=method,
        return_convergence_delta=True)
    ref = ref.numpy()
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), f"integrated_gradients[{method}]/captum")
    ours_delta = np.array([e["convergence_delta"] for e in res.extras])
    np.testing.assert_allclose(ours_delta, delta.numpy(), atol=1e-3)
    total = 3 + 3 * steps + 3
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)


def test_guided_backprop_vs_captum(model, fwd, images, classes):
    res = create("guided_backprop", fwd).attribute(images, classes)
    ref = captum_attr.GuidedBackprop(model).attribute(tt(images), target=tt(classes)).detach().numpy()
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-4, atol=1e-7)
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), "guided_backprop/captum")


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_gradcam_vs_captum(model, fwd, images, classes, mode):
    res = create("guided_gradcam", fwd, interpolate=mode).attribute(images, classes)
    ref = captum_attr.GuidedGradCam(model, model.relu3).attribute(
        tt(images), target=tt(classes), interpolate_mode=mode).detach().numpy()
    np.testing.assert_allclose(res.attributions, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert_agree(res.maps, np.abs(ref.sum(axis=1)), f"guided_gradcam[{mode}]/captum")


# ----------------------------------------------------------------------------------------
# targets, degenerate gradients, batching


def test_target_handling(model, fwd, images, classes):
    with torch.no_grad():
        logits = model(tt(images)).numpy()
    top = logits.argmax(1)
    for target in (None, -1, [-1, -1, -1]):
        res = create("gradcam", fwd).attribute(images, target)
        np.testing.assert_array_equal(res.target_class, top)
        np.testing.assert_allclose(res.score, logits[np.arange(3), top], rtol=1e-5)
    mixed = np.array([2, -1, 4])
    res = create("saliency", fwd).attribute(images, mixed)
    np.testing.assert_array_equal(res.target_class, [2, top[1], 4])
    # a per-image class gives the same map as explaining that image alone
    for name, opts in (("gradcam", {}), ("integrated_gradients", {"n_steps": 8}), ("scorecam", {})):
        m = create(name, fwd, **opts).attribute(images, mixed, batch_size=2)
        alone = create(name, fwd, **opts).attribute(images[2:3], 4)
        np.testing.assert_allclose(m.maps[2], alone.maps[0], rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(m.target_class, [2, top[1], 4])
    res = create("gradcam", fwd).attribute(images, 3)
    np.testing.assert_array_equal(res.target_class, [3, 3, 3])
    with pytest.raises(ValueError, match="one class per image"):
        create("gradcam", fwd).attribute(images, [1, 2])
    with pytest.raises(ValueError, match="N x C x H x W"):
        create("gradcam", fwd).attribute(images[0])


def _zero_gradient_forward(images):
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(len(images), 4, 6, 6)), 0).astype(np.float32)

    def forward(inputs, target, outputs):
        n = inputs.shape[0]
        res = {
            contract.ACTIVATIONS: acts[:n],
            contract.GRAD_ACTIVATIONS: np.zeros((n, 4, 6, 6), np.float32),
            contract.GRAD_INPUT: np.zeros_like(inputs),
            contract.GUIDED_GRAD_INPUT: np.zeros_like(inputs),
            contract.TARGET_CLASS: np.where(np.asarray(target) < 0, 0, target).astype(np.int64),
            contract.SCORE: np.zeros(n, np.float32),
            LOGITS: np.zeros((n, 3), np.float32),
            PROBABILITIES: np.full((n, 3), 1 / 3, np.float32),
        }
        return {k: res[k] for k in outputs}

    return forward


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "saliency",
                                  "gradient_x_input", "smoothgrad", "integrated_gradients",
                                  "guided_backprop", "guided_gradcam"])
def test_zero_gradients_give_zero_maps(name, images):
    res = create(name, _zero_gradient_forward(images)).attribute(images[:2])
    assert not np.isnan(res.maps).any() and not res.maps.any()
    norm = res.normalized()
    assert not np.isnan(norm).any() and not norm.any()


def test_all_zero_activations_give_zero_maps(images):
    def forward(inputs, target, outputs):
        n = inputs.shape[0]
        res = {contract.ACTIVATIONS: np.zeros((n, 4, 6, 6), np.float32),
               contract.TARGET_CLASS: np.zeros(n, np.int64), contract.SCORE: np.zeros(n, np.float32),
               LOGITS: np.zeros((n, 3), np.float32)}
        return {k: res[k] for k in outputs}

    for name, opts in (("eigencam", {}), ("scorecam", {}), ("cam", {"weights": np.ones((3, 4))})):
        res = create(name, forward, **opts).attribute(images[:2])
        assert not np.isnan(res.normalized()).any() and not res.maps.any(), name


def test_scorecam_batching_is_invisible(fwd, images, classes):
    rec2, rec16 = Recorder(fwd), Recorder(fwd)
    progress = []
    a = create("scorecam", rec2).attribute(images, classes, batch_size=2,
                                           progress=lambda d, t: progress.append((d, t)))
    b = create("scorecam", rec16).attribute(images, classes, batch_size=16)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.channel_weights, b.channel_weights, rtol=1e-6, atol=1e-9)
    evaluated = sum(e["channels_evaluated"] for e in a.extras)
    assert max(rec2.calls) <= 2 and max(rec16.calls) <= 16
    assert sum(rec2.calls) == sum(rec16.calls) == 3 + evaluated
    assert progress[-1] == (3 + evaluated, 3 + evaluated)


def test_multipass_batching_is_invisible(fwd, images, classes):
    for name, opts in (("smoothgrad", {"n_samples": 5}), ("integrated_gradients", {"n_steps": 8})):
        rec = Recorder(fwd)
        a = create(name, rec, **opts).attribute(images, classes, batch_size=3)
        b = create(name, fwd, **opts).attribute(images, classes, batch_size=64)
        assert max(rec.calls) <= 3
        np.testing.assert_allclose(a.attributions, b.attributions, rtol=1e-5, atol=1e-8, err_msg=name)


def test_missing_output_is_named(images):
    def forward(inputs, target, outputs):
        return {contract.TARGET_CLASS: np.zeros(len(inputs), np.int64)}

    with pytest.raises(KeyError, match="grad_input"):
        create("saliency", forward).attribute(images)
