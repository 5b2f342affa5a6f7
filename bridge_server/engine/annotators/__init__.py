"""The two network annotators of ACE++'s local-edit modes, as the authors run them (modelscope/scepter):

- `contour`: scepter's InfoDrawContourAnnotator (the "informative drawings" contour-style generator, 3 residual
  blocks), weights `informative_drawing_contour_style.pth` of ModelScope `iic/scepter_annotator`;
- `depth`: scepter's MidasDetector (MiDaS v3 DPT-Hybrid, a ViT-B/16 on a ResNet-50 stem), weights
  `dpt_hybrid-midas-501f0c75.pt` of the same repository.

The networks are our own torch modules (`contour.py`, `dpt.py`) with our own parameter names; `weights.py` maps the
authors' state-dict keys onto them. `convert.py` turns the authors' pickled checkpoints into safetensors once,
offline; the daemon loads safetensors only (`weights.load_annotator`). `rules.py` holds the authors' pre- and
post-processing as plain numpy/OpenCV, so it is tested without a network.
"""
