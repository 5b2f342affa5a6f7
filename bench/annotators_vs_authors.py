"""The contour and depth annotators against the ACE++ authors' own code, with the same random weights.

Not a CI test: it needs a checkout of modelscope/scepter (their annotators) and timm (which their DPT-Hybrid is
built on). It builds the authors' InfoDraw ContourInference and MiDaS DPTDepthModel('vitb_rn50_384') with random
weights (nudged so no layer is dead), saves their state dicts with torch.save as the authors' checkpoints are,
converts them with bridge_server's converter, and compares:

1. the networks' raw outputs at several sizes (the contour maps should be identical, depth within float noise);
2. the whole annotators: scepter's MidasDetector.forward / InfoDrawContourAnnotator.forward (their resize,
   normalisation and uint8 output) against bridge_server's run_depth / run_contour on the same pictures.

    .venv/bin/python bench/annotators_vs_authors.py --scepter /path/to/scepter [--timm /path/with/timm]

Only their annotator modules are imported; the scepter framework around them (registry, config, file system,
distributed helpers) is replaced by the few names those modules import. Where torchvision cannot be imported (a
CPU-only torch with no matching torchvision wheel), timm gets a stand-in: it imports torchvision only for names
that the DPT-Hybrid never calls. einops likewise, for the one pattern the annotators use.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "shared")]


class _AnyName(type(torch.nn.Module)):  # type: ignore[misc]
    def __getattr__(cls, attr: str) -> str:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return f"stand-in.{attr}"


class _StandIn(torch.nn.Module, metaclass=_AnyName):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's signature
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def anything(attr: str) -> type:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _StandIn

        module.__getattr__ = anything  # type: ignore[method-assign]
        return module

    def exec_module(self, module):  # noqa: ANN001
        pass


def _prepare_imports(scepter: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandInFinder())
    try:
        import einops  # noqa: F401
    except ImportError:
        einops = types.ModuleType("einops")

        def rearrange(x: torch.Tensor, pattern: str) -> torch.Tensor:
            assert pattern == "h w c -> 1 c h w", pattern
            return x.permute(2, 0, 1)[None]

        einops.rearrange = rearrange  # type: ignore[attr-defined]
        sys.modules["einops"] = einops
    framework = {
        "scepter.modules.annotator.base_annotator": {"BaseAnnotator": object},
        "scepter.modules.annotator.registry": {"ANNOTATORS": types.SimpleNamespace(register_class=lambda: lambda c: c)},
        "scepter.modules.utils.config": {"dict_to_yaml": None},
        "scepter.modules.utils.distribute": {"we": types.SimpleNamespace(device_id="cpu")},
        "scepter.modules.utils.file_system": {"FS": None},
    }
    for name, attrs in framework.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    for package in ("scepter", "scepter.modules", "scepter.modules.annotator", "scepter.modules.utils"):
        module = types.ModuleType(package)
        module.__path__ = [str(scepter / package.replace(".", "/"))]
        sys.modules.setdefault(package, module)


def picture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 256], -1) + rng.integers(-30, 31, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scepter", type=Path, required=True, help="a checkout of github.com/modelscope/scepter")
    parser.add_argument("--timm", type=Path, help="a folder to import timm from (else the environment's)")
    args = parser.parse_args()
    if args.timm:
        sys.path.insert(0, str(args.timm))
    _prepare_imports(args.scepter)
    from scepter.modules.annotator.informative_drawing import ContourInference, InfoDrawContourAnnotator
    from scepter.modules.annotator.midas.dpt_depth import DPTDepthModel
    from scepter.modules.annotator.midas_op import MidasDetector

    from bridge_server.engine.annotators import convert, weights

    torch.manual_seed(0)
    dpt = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
    contour = ContourInference(3, 1, 3, True).eval()  # model_zoo.yaml: INPUT_NC 3, OUTPUT_NC 1, 3 blocks, sigmoid
    with torch.no_grad():
        for p in dpt.state_dict().values():
            if p.dtype.is_floating_point:
                p.add_(torch.randn_like(p) * 0.02)
    folder = Path(tempfile.mkdtemp())
    torch.save(dpt.state_dict(), folder / "dpt_hybrid.pt")
    torch.save(contour.state_dict(), folder / "informative_drawing_contour_style.pth")
    for kind, name in (("depth", "dpt_hybrid.pt"), ("contour", "informative_drawing_contour_style.pth")):
        entry = convert.convert(kind, folder / name, folder / "out")
        print(f"{kind}: converted {name} -> {entry['bytes']} bytes, config {entry['config']}")
    ours_depth = weights.load_annotator("depth", folder / "out" / "depth.safetensors")
    ours_contour = weights.load_annotator("contour", folder / "out" / "contour.safetensors")

    print("\nnetworks, raw outputs")
    for h, w in [(384, 384), (256, 448), (512, 320)]:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h + w)) * 2 - 1
        with torch.no_grad():
            started = time.perf_counter()
            a = dpt(x)
            theirs_s = time.perf_counter() - started
            started = time.perf_counter()
            b = ours_depth(x)
            ours_s = time.perf_counter() - started
            c, e = contour((x + 1) / 2), ours_contour((x + 1) / 2)
        diff = (a - b).abs().max().item()
        print(
            f"  {h}x{w}: depth max |diff| {diff:.2e} (of {a.abs().max().item():.3f}; theirs {theirs_s:.1f} s, "
            f"ours {ours_s:.1f} s), contour identical {torch.equal(c, e)}"
        )

    print("\nwhole annotators on pictures (uint8 outputs)")
    theirs_depth = types.SimpleNamespace(model=dpt)
    theirs_contour = types.SimpleNamespace(model=contour)
    rng = np.random.default_rng(0)
    for h, w in [(200, 320), (333, 250), (96, 160)]:
        img = picture(h, w, rng)
        a, b = MidasDetector.forward(theirs_depth, img), weights.run_depth(ours_depth, img)
        delta = np.abs(a.astype(int) - b.astype(int))
        line = f"  {h}x{w}: depth {np.mean(delta == 0) * 100:.3f}% pixels equal, max diff {delta.max()}"
        if h % 4 == 0 and w % 4 == 0:  # their contour composite fits only sides that are multiples of 4
            same = np.array_equal(
                InfoDrawContourAnnotator.forward(theirs_contour, img), weights.run_contour(ours_contour, img)
            )
            line += f"; contour identical {same}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
