"""Attention U-Net (Oktay et al., 2018) for 2D and 3D images.

Each skip connection passes through an :class:`AttentionGate` whose gating signal is
the decoder feature of the next coarser level. Every gate returns its coefficients
(``alpha``, values in [0, 1] on the skip feature's grid) and the network's forward
returns them by name next to the logits, so callers can show where the network looked.

Gate names are ``gate1`` (finest level, full resolution) to ``gate{depth-1}``
(coarsest skip level, ``1 / 2**(depth-2)`` of the input resolution).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "JoinConv",
    "MAX_MEMBERS",
    "ModelConfig",
    "PRESETS",
    "TASKS",
    "join_members",
]

#: What a network's output channels mean (see :class:`ModelConfig`).
TASKS = ("instances", "semantic")
#: The most networks one model may average (:attr:`ModelConfig.members`).
MAX_MEMBERS = 8


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; saved next to its weights.

    ``classes`` names the output channels. ``task`` says what they mean:

    - ``"instances"`` (the default): background, interior, boundary; prediction separates
      touching objects with a watershed.
    - ``"semantic"``: output channel k is label value k, 0 the background (or, for a model
      trained on strokes with ``zero_is="unlabelled"``, a channel never trained) and 1..K the
      user's classes; prediction is the arg-max class value.

    ``members`` > 1: the network is that many networks of this description, trained apart (each on
    another part of the images, see ``core.train.folds``), whose class probabilities and gate maps are
    averaged. ``to_dict`` writes ``task`` only when it is not ``"instances"`` and ``members`` only
    when it is not 1, so the description of an instance model (saved files, the bundled model's card)
    is what it was before they existed; ``from_dict`` reads them missing as the defaults.
    """

    spatial_dims: int = 2
    in_channels: int = 3
    classes: tuple[str, ...] = ("background", "interior", "boundary")
    base_width: int = 16
    depth: int = 5
    extra: dict = field(default_factory=dict, compare=False)
    task: str = "instances"
    members: int = 1

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one skip connection), got {self.depth}")
        if self.in_channels < 1 or self.base_width < 1:
            raise ValueError("in_channels and base_width must be positive")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if len(self.classes) < 2:
            raise ValueError("a network needs at least two classes (background and foreground)")
        if not isinstance(self.members, int) or not 1 <= self.members <= MAX_MEMBERS:
            raise ValueError(f"members must be a whole number from 1 to {MAX_MEMBERS}, got {self.members!r}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def out_channels(self) -> int:
        return len(self.classes)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * 2**level for level in range(self.depth))

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(f"gate{level + 1}" for level in range(self.depth - 1))

    @property
    def unlabelled_channel(self) -> bool:
        """A semantic model trained on strokes: channel 0 ("unlabelled") was never a target, so
        prediction never gives class 0 (its output is whatever the untrained channel drifted to)."""
        return self.task == "semantic" and self.classes[0] == "unlabelled"

    @property
    def voxel_size(self) -> float | None:
        """A 3D instance model's own voxel size (world units), when it sees volumes shrunk so that
        its objects are about 17 voxels across (``extra["voxel_size"]``, see
        :func:`core.resampling.object_voxel_size`); None: the volume's own (cubic) grid."""
        voxel = self.extra.get("voxel_size")
        return None if voxel is None else float(voxel)

    @property
    def intensity_window(self) -> tuple[tuple[float, float], ...] | None:
        """Per input channel, the fixed window every image is normalised and clipped to (a CT model's,
        in Hounsfield units: ``extra["intensity_window"]``, see :mod:`core.intensity`); None: each
        image's own percentiles."""
        window = self.extra.get("intensity_window")
        return None if window is None else tuple((float(lo), float(hi)) for lo, hi in window)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the network accepts must be multiples of this."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        if self.task == "instances":
            del d["task"]  # the default: instance models are described as before tasks existed
        if self.members == 1:
            del d["members"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        keys = ("spatial_dims", "in_channels", "classes", "base_width", "depth", "task", "members")
        known = {k: d[k] for k in keys if k in d}
        return cls(**known, extra=dict(d.get("extra", {})))


#: Named sizes. ``default`` is about 2 M parameters, like MONAI's 16..256 AttentionUnet.
PRESETS: dict[str, dict] = {
    "tiny": {"base_width": 4, "depth": 3},
    "small": {"base_width": 8, "depth": 4},
    "default": {"base_width": 16, "depth": 5},
    "large": {"base_width": 32, "depth": 5},
}


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(dims: int) -> type[nn.Module]:
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d


def _up(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, batch norm, ReLU) layers."""

    def __init__(self, dims: int, in_ch: int, out_ch: int) -> None:
        conv, norm = _conv(dims), _norm(dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=False),
            norm(out_ch),
            nn.ReLU(inplace=True),
            conv(out_ch, out_ch, 3, padding=1, bias=False),
            norm(out_ch),
            nn.ReLU(inplace=True),
        )


class JoinConv(nn.Module):
    """A conv over two inputs' channels one after the other, as the sum of a conv over each: what
    ``conv(torch.cat([a, b], dim=1))`` gives, without building the joined tensor. On the CPU,
    joining two 16-channel channels-last maps of 544² takes as long as the conv itself (20 ms).
    ``forward`` takes the pair ``(a, b)``."""

    def __init__(self, conv: nn.Module, split: int) -> None:
        super().__init__()
        self.first, self.second = copy.deepcopy(conv), copy.deepcopy(conv)
        with torch.no_grad():
            self.first.weight = nn.Parameter(conv.weight[:, :split].clone())
            self.second.weight = nn.Parameter(conv.weight[:, split:].clone())
        self.first.in_channels, self.second.in_channels = split, conv.in_channels - split
        self.second.bias = None

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a, b = pair
        return self.first(a).add_(self.second(b))


class AttentionGate(nn.Module):
    """Additive soft attention gate (Oktay et al., 2018, Fig. 2).

    ``x`` is the skip feature, ``g`` the gating signal from the coarser level (half
    the resolution of ``x``). ``x`` is brought to ``g``'s grid by a strided 2x2 conv,
    added to a 1x1 projection of ``g``, passed through ReLU, a 1x1 conv to one
    channel and a sigmoid; the coefficients are resampled back to ``x``'s grid and
    weight ``x``. Returns ``(gated, alpha)`` with ``alpha`` on ``x``'s grid.
    """

    def __init__(self, dims: int, x_channels: int, g_channels: int, inter_channels: int) -> None:
        super().__init__()
        conv = _conv(dims)
        self.theta_x = conv(x_channels, inter_channels, 2, stride=2, bias=False)
        self.phi_g = conv(g_channels, inter_channels, 1, bias=True)
        self.psi = conv(inter_channels, 1, 1, bias=True)
        # The paper follows the gate with a 1x1 conv + norm on the gated features.
        self.out = nn.Sequential(conv(x_channels, x_channels, 1, bias=False), _norm(dims)(x_channels))
        self._mode = "bilinear" if dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta_x(x)
        phi = self.phi_g(g)
        if phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode=self._mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=self._mode, align_corners=False)
        return self.out(x * alpha), alpha


class AttentionUNet(nn.Module):
    """U-Net with an attention gate on every skip connection.

    ``forward(x)`` returns ``(logits, gate_maps)`` where ``gate_maps`` maps each gate
    name to its coefficients, shape ``(N, 1, *spatial)`` at that level's resolution.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ModelConfig or keyword arguments, not both")
        self.config = config
        if config.members > 1:  # an ensemble: its members are the networks, nothing else here
            member = replace(config, members=1, extra=dict(config.extra))
            self.members = nn.ModuleList([AttentionUNet(member) for _ in range(config.members)])
            return
        self.members = None
        dims, widths = config.spatial_dims, config.widths
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d

        self.encoder = nn.ModuleList(
            [ConvBlock(dims, config.in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)]
        )
        self.pool = pool(2)
        # Decoder lists are ordered coarse -> fine; index i serves skip level depth-2-i.
        skip_levels = list(range(config.depth - 2, -1, -1))
        self.upsample = nn.ModuleList([_up(dims)(widths[lv + 1], widths[lv], 2, stride=2) for lv in skip_levels])
        self.gates = nn.ModuleDict(
            {
                config.gate_names[lv]: AttentionGate(dims, widths[lv], widths[lv + 1], max(widths[lv] // 2, 1))
                for lv in skip_levels
            }
        )
        self.decoder = nn.ModuleList([ConvBlock(dims, 2 * widths[lv], widths[lv]) for lv in skip_levels])
        self.head = _conv(dims)(widths[0], config.out_channels, 1)
        self._skip_levels = skip_levels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.members is not None:
            return self._average(x)
        multiple = self.config.size_multiple
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not a multiple of {multiple}; "
                f"pad the input (e.g. to {tuple(-(-s // multiple) * multiple for s in x.shape[2:])})"
            )
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        g = skips.pop()
        gate_maps: dict[str, torch.Tensor] = {}
        for up, decode, level in zip(self.upsample, self.decoder, self._skip_levels):
            name = self.config.gate_names[level]
            gated, gate_maps[name] = self.gates[name](skips[level], g)
            joined = isinstance(decode[0], JoinConv)  # joined_for_cpu
            g = decode((gated, up(g))) if joined else decode(torch.cat([gated, up(g)], dim=1))
        return self.head(g), gate_maps

    def _average(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The members' mean class probabilities, as logits (their log: softmax gives the mean back), and their mean
        gate maps; summed member by member, so that one member's outputs are held at a time besides the sums."""
        total: torch.Tensor | None = None
        gates: dict[str, torch.Tensor] = {}
        for member in self.members:
            logits, maps = member(x)
            probabilities = F.softmax(logits.float(), dim=1)
            total = probabilities if total is None else total + probabilities
            for name, alpha in maps.items():
                gates[name] = alpha if name not in gates else gates[name] + alpha
        n = len(self.members)
        return torch.log((total / n).clamp_min(1e-12)), {name: alpha / n for name, alpha in gates.items()}

    def fused_for_inference(self) -> AttentionUNet:
        """A copy in eval mode with each batch norm folded into the conv before it.

        Same outputs (to float precision), fewer passes over memory: worth ~10-20 %
        on the CPU. The original module is untouched, so it can still be trained.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        fused = copy.deepcopy(self).eval()  # one copy, members and all; each network folded in place
        for net in fused.members if fused.members is not None else (fused,):
            blocks = list(net.encoder) + list(net.decoder) + [gate.out for gate in net.gates.values()]
            for block in blocks:
                for i in range(len(block) - 1):
                    if isinstance(block[i], nn.Conv2d | nn.Conv3d) and isinstance(
                        block[i + 1], nn.BatchNorm2d | nn.BatchNorm3d
                    ):
                        block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                        block[i + 1] = nn.Identity()
        return fused

    def joined_for_cpu(self) -> AttentionUNet:
        """This model (changed in place; an inference copy) with each decoder's first conv a
        :class:`JoinConv`: the skip and the upsampled features are never joined into one tensor.
        Same outputs to float precision; 3-4 % less time per 544² tile on the CPU
        (benchmarks/README.md). For inference only, not for export."""
        if self.members is not None:
            for member in self.members:
                member.joined_for_cpu()
            return self
        for decode, level in zip(self.decoder, self._skip_levels):
            if not isinstance(decode[0], JoinConv):
                decode[0] = JoinConv(decode[0], self.config.widths[level])
        return self


def join_members(models: list[AttentionUNet]) -> AttentionUNet:
    """One model averaging ``models`` (networks of one description, each a single network), their weights copied."""
    config = models[0].config
    if any(m.config != config or m.members is not None for m in models):
        raise ValueError("only single networks of the same description can be joined")
    if len(models) == 1:
        return copy.deepcopy(models[0])
    joined = AttentionUNet(replace(config, members=len(models), extra=dict(config.extra)))
    for own, model in zip(joined.members, models):
        own.load_state_dict(model.state_dict())
    return joined


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
