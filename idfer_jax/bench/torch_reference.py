"""The baseline's train step in PyTorch, for `idfer bench`'s JAX / PyTorch ratio.

The same network as `models.ResNet` + `ClassifierHead` built from the same preset (blocks, widths, stem,
BatchNorm with eps 1e-5 and the same momentum, zero-initialised last norm scale of each residual branch,
no conv bias before a norm), the same loss (softmax cross-entropy) and the same update (global-norm
clipping, then AdamW with weight decay on conv and linear weights only). Inputs are NCHW (PyTorch's
native layout) or channels_last; on a GPU, `torch.compile` and bf16 autocast are what a PyTorch user
would switch on, so they are options here.

PyTorch is an optional dependency (`pip install torch==2.13.0`, the CPU build on this project's machines).
"""

from __future__ import annotations

import time
from typing import Any


def import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "The PyTorch reference needs torch: `pip install torch==2.13.0` (or "
            "`pip install -e \".[test]\"`), or run `idfer bench --torch=false`."
        ) from e
    return torch


def build_resnet(preset: dict[str, Any], num_classes: int, in_channels: int, bn_momentum: float = 0.9):
    """A torch.nn.Module equal in architecture to `models.ResNet(**preset)` + a linear head."""
    torch = import_torch()
    nn = torch.nn
    if preset.get("norm", "batch") != "batch":
        raise ValueError("The PyTorch reference builds BatchNorm ResNets only (the baseline's norm).")
    momentum = 1.0 - bn_momentum  # flax keeps `momentum` of the old average, PyTorch takes the new one

    def bn(c, zero=False):
        layer = nn.BatchNorm2d(c, eps=1e-5, momentum=momentum)
        if zero:
            nn.init.zeros_(layer.weight)
        return layer

    class SamePadConv(nn.Conv2d):
        """flax's 'SAME' padding: for a strided conv on an even map it pads one more row and column at
        the end than at the start (PyTorch's `padding=k // 2` would shift every window by a pixel)."""

        def forward(self, x):
            pads = []
            for n, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride),
                               strict=True):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads += [total // 2, total - total // 2]
            return super().forward(torch.nn.functional.pad(x, pads))

    def conv(cin, cout, k, stride=1, padding=None):
        if padding is None:
            layer = SamePadConv(cin, cout, k, stride=stride, padding=0, bias=False)
        else:
            layer = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        return layer

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, width, stride):
            super().__init__()
            self.branch = nn.Sequential(conv(cin, width, 3, stride), bn(width), nn.ReLU(inplace=True),
                                        conv(width, width, 3), bn(width, zero=True))
            self.shortcut = (nn.Sequential(conv(cin, width, 1, stride, 0), bn(width))
                             if stride != 1 or cin != width else nn.Identity())

        def forward(self, x):
            return torch.relu(self.shortcut(x) + self.branch(x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, width, stride):
            super().__init__()
            out = width * 4
            self.branch = nn.Sequential(
                conv(cin, width, 1, 1, 0), bn(width), nn.ReLU(inplace=True),
                conv(width, width, 3, stride), bn(width), nn.ReLU(inplace=True),
                conv(width, out, 1, 1, 0), bn(out, zero=True))
            self.shortcut = (nn.Sequential(conv(cin, out, 1, stride, 0), bn(out))
                             if stride != 1 or cin != out else nn.Identity())

        def forward(self, x):
            return torch.relu(self.shortcut(x) + self.branch(x))

    block = {"basic": Basic, "bottleneck": Bottleneck}[preset["block"]]
    widths = preset["widths"]
    stem_width = preset.get("stem_width") or widths[0]
    if preset["stem"] == "imagenet":
        stem = [conv(in_channels, stem_width, 7, 2, 3), bn(stem_width), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1)]
    else:
        stem = [conv(in_channels, stem_width, 3), bn(stem_width), nn.ReLU(inplace=True)]
    layers, cin = list(stem), stem_width
    for i, (num_blocks, width) in enumerate(zip(preset["stage_sizes"], widths, strict=True)):
        for j in range(num_blocks):
            layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def train_step_throughput(preset: dict[str, Any], *, batch_size: int, image_shape: tuple[int, int, int],
                          num_classes: int, steps: int, learning_rate: float = 2e-3,
                          weight_decay: float = 5e-4, grad_clip: float = 1.0, device: str = "cpu",
                          channels_last: bool = False, bf16: bool = False, compile: bool = False,
                          warmup_steps: int = 3, seed: int = 0) -> dict[str, Any]:
    """Images/s of the baseline's train step in PyTorch on in-memory batches (the first
    `warmup_steps` steps, which include any compilation, are timed separately)."""
    torch = import_torch()
    torch.manual_seed(seed)
    h, w, c = image_shape
    model = build_resnet(preset, num_classes, c).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate)
    images = torch.rand(batch_size, c, h, w, device=device).mul(2).sub(1)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss

    run = torch.compile(step) if compile else step
    model.train()

    def timed(num_steps: int) -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            loss = run(images, labels)
        loss.item()  # waits for the last step
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warmup_s = timed(warmup_steps)
    seconds = timed(steps)
    return {"framework": "pytorch", "torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "warmup_s": warmup_s, "step_s": seconds / steps, "images_per_s": batch_size * steps / seconds,
            "channels_last": channels_last, "bf16": bf16, "compile": compile, "device": device}


def load_flax_variables(model, variables: dict) -> None:
    """Copies a Flax `ExpressionClassifier`'s variables ({'params', 'batch_stats'} with 'backbone' and
    'head') into `build_resnet`'s module, so the two can be compared output for output."""
    torch = import_torch()
    import numpy as np

    params, stats = variables["params"], variables.get("batch_stats", {})

    def tensor(x, conv=False):
        x = np.array(x, np.float32)  # a writable copy: torch.from_numpy shares memory
        return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1) if conv else x))

    def set_conv(layer, p):
        layer.weight.data.copy_(tensor(p["kernel"], conv=True))

    def set_bn(layer, p, s):
        layer.weight.data.copy_(tensor(p["scale"]))
        layer.bias.data.copy_(tensor(p["bias"]))
        layer.running_mean.copy_(tensor(s["mean"]))
        layer.running_var.copy_(tensor(s["var"]))

    backbone, backbone_stats = params["backbone"], stats.get("backbone", {})
    modules = list(model)
    set_conv(modules[0], backbone["stem_conv"])
    set_bn(modules[1], backbone["stem_norm"], backbone_stats.get("stem_norm", {}))
    blocks = [m for m in modules if hasattr(m, "branch")]
    names = sorted((k for k in backbone if k.startswith("stage")),
                   key=lambda k: tuple(int(n) for n in k.replace("stage", "").split("_block")))
    for block, name in zip(blocks, names, strict=True):
        p, s = backbone[name], backbone_stats.get(name, {})
        convs = [m for m in block.branch if isinstance(m, torch.nn.Conv2d)]
        norms = [m for m in block.branch if isinstance(m, torch.nn.BatchNorm2d)]
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True), start=1):
            set_conv(conv, p[f"conv{i}"])
            set_bn(norm, p[f"norm{i}"], s.get(f"norm{i}", {}))
        if "proj_conv" in p:
            set_conv(block.shortcut[0], p["proj_conv"])
            set_bn(block.shortcut[1], p["proj_norm"], s.get("proj_norm", {}))
    head = params["head"]["logits"]
    modules[-1].weight.data.copy_(tensor(head["kernel"]).T)
    modules[-1].bias.data.copy_(tensor(head["bias"]))
